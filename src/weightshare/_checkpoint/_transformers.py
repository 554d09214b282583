"""What ``from_pretrained`` will do with a folder, asked of transformers itself.

The model is built from ``config.json`` on the meta device (no memory, no weights
read), with ``trust_remote_code=False``: a folder's own code is never run. The
file's keys are renamed by transformers' own loading rules
(``get_model_conversion_mapping`` and ``rename_source_key``, which turn legacy
names such as ``language_model.model.embed_tokens.weight`` or ``embed_out.weight``
into the model's), so the ties, the shapes and the dtypes read off the model are
compared with the right tensors of the file.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ._contents import Entry
from ._hf import Declared

__all__ = ["HEAD_CLASSES", "from_transformers"]

# When config.json names no architecture: the auto classes tried, in order, so that
# the model has its output layer (a base model has none, and no tie to check). An
# encoder-decoder config tries the sequence-to-sequence classes first.
HEAD_CLASSES = (
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoModelForMaskedLM",
    "AutoModelForImageTextToText",
    "AutoModelForSpeechSeq2Seq",
    "AutoModel",
)


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


def from_transformers(folder: Path, entries: dict[str, Entry]) -> Declared:
    """The folder's ties, shapes, dtypes and missing keys, as transformers sees them."""
    import torch
    import transformers

    from .._groups import shared_groups

    with _quiet(transformers):
        config = transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
        cls, how = _model_class(transformers, config)
        dtype = config.dtype or _first_float(entries)
        with torch.device("meta"):
            model = cls._from_config(config, dtype=dtype)
    state = model.state_dict()
    to_file, converted = _renamed(model, state, entries)

    def in_file(name: str) -> str:
        return to_file.get(name, name)

    found = shared_groups(model)
    groups = [[in_file(name) for name in group] for group in found]
    mapping = dict(getattr(model, "all_tied_weights_keys", None) or {})
    sources = {
        index: in_file(mapping[target])
        for index, group in enumerate(found)
        for target in group
        if target in mapping and mapping[target] in group
    }
    flag = _flag(model.config)
    tied = {name for group in found for name in group}  # the tie rules judge these
    missing = [
        name
        for name in state
        if name not in to_file and name not in tied and not _ignored(model, name)
    ]
    tieable = [name for name in _tieable(type(model)) if name in state]
    return Declared(
        f"transformers {transformers.__version__} meta-device model "
        f"({cls.__name__} {how}); file keys renamed by transformers' loading rules",
        flag,
        "architecture",
        groups=groups,
        sources=sources,
        untied_missing=[n for n in missing if n in tieable and flag is False],
        shapes={
            in_file(name): tuple(value.shape)
            for name, value in state.items()
            if in_file(name) not in converted
        },
        dtypes={
            in_file(name): str(value.dtype).removeprefix("torch.")
            for name, value in state.items()
        },
        missing=[n for n in missing if not (n in tieable and flag is False)],
    )


def _model_class(transformers: ModuleType, config: Any) -> tuple[Any, str]:
    """The class ``from_pretrained`` would build, and how it was chosen."""
    for architecture in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, architecture, None)
        if isinstance(cls, type):
            return cls, f"from config.json's architectures [{architecture!r}]"
    order = list(HEAD_CLASSES)
    if getattr(config, "is_encoder_decoder", False):  # not its decoder alone
        order.sort(key=lambda name: "Seq2Seq" not in name)
    for name in order:
        auto = getattr(transformers, name)
        try:
            return auto._model_mapping[type(config)], (
                f"chosen by {name}: config.json names no architecture"
            )
        except KeyError:
            continue
    raise ValueError(f"no model class for {type(config).__name__}")


def _first_float(entries: dict[str, Entry]) -> str | None:
    """The dtype ``from_pretrained`` infers when the config has none."""
    floats = ("float", "bfloat")
    return next((e.dtype for e in entries.values() if e.dtype.startswith(floats)), None)


def _renamed(
    model: Any, state: dict[str, Any], entries: dict[str, Entry]
) -> tuple[dict[str, str], set[str]]:
    """Model key -> file key, by transformers' rules; and file keys it converts."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        rename_source_key,
    )

    mapping = get_model_conversion_mapping(model, None, None)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    prefix = model.base_model_prefix
    to_file: dict[str, str] = {}
    converted: set[str] = set()
    for key in entries:
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, state)
        if renamed not in state and key in state:
            renamed, pattern = rename_source_key(key, [], [], prefix, state)
        if pattern is not None:
            converted.add(key)
        if renamed in state:
            to_file.setdefault(renamed, key)
    return to_file, converted


def _flag(config: Any) -> bool | None:
    flag = getattr(config, "tie_word_embeddings", None)
    if flag is None and hasattr(config, "get_text_config"):
        flag = getattr(config.get_text_config(), "tie_word_embeddings", None)
    return flag if isinstance(flag, bool) else None


def _ignored(model: Any, name: str) -> bool:
    """Keys ``from_pretrained`` does not report missing (the class's own patterns)."""
    patterns = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    return any(re.search(pattern, name) for pattern in patterns)


def _tieable(cls: type) -> list[str]:
    """Names the class ties when its config flag is on (plain names, no patterns)."""
    keys = getattr(cls, "_tied_weights_keys", None) or {}
    return [name for name in keys if re.fullmatch(r"[\w.]+", name)]
