"""The ties a Hugging Face model folder declares (internal, for weightshare.check).

With ``transformers`` installed, the model is built from ``config.json`` on the meta
device (no memory, no weights read) and its tied parameters are read off it, so any
architecture that transformers knows works. Without it, only the config flag
``tie_word_embeddings`` is read and the usual names are assumed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ._read import Entry, Unreadable, one_line

__all__ = ["Declared", "declared_ties", "read_config", "weight_files"]

HEAD = "lm_head.weight"
# Where common architectures keep their input embedding, most specific first.
EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
    "embed_in.weight",
    "shared.weight",
)
# What a folder may hold, in the order transformers prefers them.
WEIGHTS = (
    ("model.safetensors", False),
    ("model.safetensors.index.json", True),
    ("pytorch_model.bin", False),
    ("pytorch_model.bin.index.json", True),
)


@dataclass
class Declared:
    """Ties the folder's architecture declares, in the file's names."""

    method: str
    flag: bool | None  # config.json's tie_word_embeddings
    source: str = "config"  # "architecture" when transformers built the model
    groups: list[list[str]] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)  # group index -> source
    untied_missing: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the model's


def read_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of the folder, or None when there is none."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Unreadable(f"config.json is not valid JSON ({one_line(err)})") from err
    if not isinstance(config, dict):
        raise Unreadable("config.json is not a JSON object")
    return config


def weight_files(folder: Path) -> tuple[list[str], str | None]:
    """The weight files of a folder by name, and the index that lists the shards."""
    for name, is_index in WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if not is_index:
            return [name], None
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise Unreadable(
                f"{name} is not a valid index (a JSON object whose 'weight_map' maps "
                f"names to files): {one_line(err)}"
            ) from err
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise Unreadable(f"{name} lists {missing[0]!r}, which is not in the folder")
        return [str(shard) for shard in shards], name
    raise Unreadable(
        "a folder, but it holds no model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def declared_ties(
    folder: Path,
    config: dict[str, Any] | None,
    entries: dict[str, Entry],
    use_transformers: bool,
) -> Declared:
    """The ties of the folder's architecture, with the method that found them."""
    if config is None:
        return Declared("no config.json: no architecture ties to check", None)
    if not use_transformers:
        reason = "transformers not used"
    elif importlib.util.find_spec("transformers") is None:
        reason = "transformers is not installed"
    else:
        try:
            return _from_transformers(folder, entries)
        except Exception as err:  # any architecture or config transformers rejects
            reason = f"transformers could not build the model: {one_line(err)}"
    return _from_flag(config, entries, reason)


def _flag(config: dict[str, Any]) -> bool | None:
    flag = config.get("tie_word_embeddings")
    text = config.get("text_config")
    if flag is None and isinstance(text, dict):
        flag = text.get("tie_word_embeddings")
    return flag if isinstance(flag, bool) else None


def _from_flag(
    config: dict[str, Any], entries: dict[str, Entry], reason: str
) -> Declared:
    flag = _flag(config)
    embedding = _embedding(entries)
    if flag is None:
        return Declared(
            f"config.json does not set tie_word_embeddings ({reason}; its default "
            "depends on the architecture): no tie assumed",
            None,
        )
    if embedding is None:
        return Declared(
            f"config flag tie_word_embeddings={str(flag).lower()} ({reason}), but no "
            "input embedding found under a usual name: no tie assumed",
            flag,
        )
    if flag:
        return Declared(
            f"config flag tie_word_embeddings=true ({reason}): assumed tie of "
            f"{embedding!r} and {HEAD!r}",
            flag,
            groups=[[embedding, HEAD]],
            sources={0: embedding},
        )
    return Declared(
        f"config flag tie_word_embeddings=false ({reason}): untied; assumed "
        f"output layer {HEAD!r}",
        flag,
        untied_missing=[] if HEAD in entries else [HEAD],
    )


def _embedding(entries: dict[str, Entry]) -> str | None:
    """The input embedding's name, guessed from the usual names.

    A name of the output layer's shape wins; then the most specific suffix, then
    the shortest name.
    """
    head = entries.get(HEAD)
    found = [
        (head is None or entry.shape != head.shape, rank, len(name), name)
        for name, entry in entries.items()
        for rank, suffix in enumerate(EMBEDDINGS)
        if name.endswith(suffix)
    ]
    return min(found)[-1] if found else None


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """Silence transformers' logging and warnings while the model is built."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)


def _from_transformers(folder: Path, entries: dict[str, Entry]) -> Declared:
    import torch
    import transformers

    from ._groups import shared_groups

    with _quiet(transformers):
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            model = _build(transformers, config)
    prefix = getattr(model, "base_model_prefix", "")

    def in_file(name: str) -> str:
        short = name.removeprefix(f"{prefix}.") if prefix else name
        return short if name not in entries and short in entries else name

    groups = [[in_file(name) for name in group] for group in shared_groups(model)]
    mapping = getattr(model, "all_tied_weights_keys", None) or {}
    sources = {
        index: in_file(mapping[target])
        for index, group in enumerate(shared_groups(model))
        for target in group
        if target in mapping and mapping[target] in group
    }
    flag = getattr(config, "tie_word_embeddings", None)
    state = model.state_dict()
    missing = [
        in_file(target)
        for target in _tieable(type(model))
        if flag is False and target in state and in_file(target) not in entries
    ]
    return Declared(
        f"transformers {transformers.__version__} meta-device model "
        f"({type(model).__name__} built from config.json)",
        flag if isinstance(flag, bool) else None,
        "architecture",
        groups=groups,
        sources=sources,
        untied_missing=missing,
        shapes={in_file(name): tuple(value.shape) for name, value in state.items()},
    )


def _build(transformers: ModuleType, config: Any) -> Any:
    """The architecture's model class, built from ``config`` (on the meta device)."""
    for architecture in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, architecture, None)
        if isinstance(cls, type):
            return cls(config)
    try:
        return transformers.AutoModelForCausalLM.from_config(config)
    except ValueError:
        return transformers.AutoModel.from_config(config)


def _tieable(cls: type) -> list[str]:
    """Names the class ties when its config flag is on (plain names, no patterns)."""
    keys = getattr(cls, "_tied_weights_keys", None) or {}
    return [name for name in keys if re.fullmatch(r"[\w.]+", name)]
