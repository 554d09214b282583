"""The ties a Hugging Face model folder declares (internal, for weightshare.check).

With ``transformers`` installed, the model is built from ``config.json`` on the meta
device (no memory, no weights read) and its tied parameters are read off it, so any
architecture that transformers knows works. Without it, only the config flag
``tie_word_embeddings`` is read and the usual names are assumed.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._contents import Entry
from ._format import Unreadable, one_line

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
    dtypes: dict[str, str] = field(default_factory=dict)  # the model's, by file name
    missing: list[str] = field(default_factory=list)  # model keys loading leaves unset
    flag_in_file: bool | None = None  # config.json's own value, before the model's
    custom: str = ""  # the custom code config.json declares (never run)


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
    custom = custom_code(config)
    declared = _declared(folder, config, entries, use_transformers, custom)
    declared.flag_in_file = _flag(config)
    declared.custom = custom
    return declared


def _declared(
    folder: Path,
    config: dict[str, Any],
    entries: dict[str, Entry],
    use_transformers: bool,
    custom: str,
) -> Declared:
    if not use_transformers:
        reason = "transformers not used"
    elif importlib.util.find_spec("transformers") is None:
        reason = "transformers is not installed"
    else:
        from ._transformers import from_transformers

        try:
            declared = from_transformers(folder, entries)
        except Exception as err:  # any architecture or config transformers rejects
            reason = f"transformers could not build the model: {one_line(err)}"
        else:
            if custom:
                declared.method += f"; {custom}"
            return declared
    if custom:
        reason += f"; {custom}"
    return _from_flag(config, entries, reason)


def custom_code(config: dict[str, Any]) -> str:
    """What custom code ``config.json`` declares (``auto_map``), or ``""``.

    The code is never imported or run: ``weightshare check`` builds the model
    with ``trust_remote_code=False``, from the library's own class for the
    config's ``model_type`` when transformers has one.
    """
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        return ""
    declared = ", ".join(f"{key}: {value}" for key, value in sorted(auto_map.items()))
    return (
        f"config.json declares custom code (auto_map {{{declared}}}), which was not "
        "run (trust_remote_code=False)"
    )


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
