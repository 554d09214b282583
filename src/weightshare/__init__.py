"""Inspect, tie, attribute and guard shared parameters (weight tying) in PyTorch.

Weight tying means one :class:`~torch.nn.Parameter` used under several names, e.g. a
language model's input embedding and output projection. ``weightshare`` finds
such ties (:func:`shared_groups`, :func:`storage_aliases`,
:func:`count_parameters`), makes and undoes them by name (:func:`tie`,
:func:`untie`, :func:`retie`), splits a shared gradient into one term per use
(:func:`grad_contributions`), notices when a tie silently breaks
(:class:`TieGuard`), saves checkpoints that keep ties (:func:`save`,
:func:`load`), builds optimizer groups that hold a shared parameter once
(:func:`param_groups`, :func:`unique_parameters`), groups tied modules for FSDP2
(:func:`fsdp_units`), and checks a checkpoint's ties on disk before it is loaded
(:func:`check`, and on the command line ``weightshare check PATH``).
:mod:`weightshare.distributed` runs a function in several processes and checks ties
across them.

Examples
--------
>>> from torch import nn
>>> import weightshare as ws
>>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
...                        "head": nn.Linear(4, 10, bias=False)})
>>> _ = ws.tie(model, "head.weight", "emb.weight")
>>> ws.shared_groups(model)
[['emb.weight', 'head.weight']]
>>> ws.count_parameters(model).saved_by_sharing
40
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Names are imported on first use
# (PEP 562 ``__getattr__``, the Scientific Python SPEC 1 convention), so that
# ``import weightshare`` is cheap and ``weightshare check`` on a safetensors file
# never imports torch. ``__init__.pyi`` lists the same names for type checkers.
_LAZY = {
    "BrokenTieError": "._errors",
    "CheckReport": "._checkpoint._report",
    "CheckpointError": "._errors",
    "Finding": "._checkpoint._report",
    "NotAParameterError": "._errors",
    "ParameterCount": "._count",
    "TensorInfo": "._checkpoint._report",
    "TieError": "._errors",
    "TieGuard": "._guard",
    "TieInfo": "._checkpoint._report",
    "UnknownNameError": "._errors",
    "check": "._checkpoint._check",
    "checkpoint_groups": "._checkpoint._saveload",
    "count_parameters": "._count",
    "fsdp_units": "._fsdp",
    "grad_contributions": "._grad",
    "is_tied": "._groups",
    "load": "._checkpoint._saveload",
    "param_groups": "._optim",
    "retie": "._tie",
    "save": "._checkpoint._saveload",
    "shared_groups": "._groups",
    "storage_aliases": "._groups",
    "tie": "._tie",
    "training_state_bytes": "._count",
    "unique_parameters": "._optim",
    "untie": "._tie",
}
_SUBMODULES = ("distributed", "models")

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])
