"""Inspect, tie, attribute and guard shared parameters (weight tying) in PyTorch.

Weight tying means one :class:`~torch.nn.Parameter` used under several names, e.g. a
language model's input embedding and output projection. ``weightshare`` finds
such ties (:func:`shared_groups`, :func:`storage_aliases`,
:func:`count_parameters`), makes and undoes them by name (:func:`tie`,
:func:`untie`, :func:`retie`), splits a shared gradient into one term per use
(:func:`grad_contributions`), notices when a tie silently breaks
(:class:`TieGuard`), saves checkpoints that keep ties (:func:`save`,
:func:`load`), and checks a checkpoint's ties on disk before it is loaded
(:func:`check`, and on the command line ``weightshare check PATH``).

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._check import CheckReport, Finding, TensorInfo, TieInfo, check
    from ._checkpoint import checkpoint_groups, load, save
    from ._count import ParameterCount, count_parameters, training_state_bytes
    from ._errors import (
        BrokenTieError,
        CheckpointError,
        NotAParameterError,
        TieError,
        UnknownNameError,
    )
    from ._grad import grad_contributions
    from ._groups import is_tied, shared_groups, storage_aliases
    from ._guard import TieGuard
    from ._tie import retie, tie, untie

# Submodules load on first use (PEP 562), so `import weightshare` and the Sphinx
# extension `weightshare.gallery` do not pay for importing torch until it is needed.
_HOMES = {
    "CheckReport": "_check",
    "Finding": "_check",
    "TensorInfo": "_check",
    "TieInfo": "_check",
    "check": "_check",
    "checkpoint_groups": "_checkpoint",
    "load": "_checkpoint",
    "save": "_checkpoint",
    "ParameterCount": "_count",
    "count_parameters": "_count",
    "training_state_bytes": "_count",
    "BrokenTieError": "_errors",
    "CheckpointError": "_errors",
    "NotAParameterError": "_errors",
    "TieError": "_errors",
    "UnknownNameError": "_errors",
    "grad_contributions": "_grad",
    "is_tied": "_groups",
    "shared_groups": "_groups",
    "storage_aliases": "_groups",
    "TieGuard": "_guard",
    "retie": "_tie",
    "tie": "_tie",
    "untie": "_tie",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'weightshare' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__version__ = "0.1.0"

__all__ = [
    "BrokenTieError",
    "CheckReport",
    "CheckpointError",
    "Finding",
    "NotAParameterError",
    "ParameterCount",
    "TensorInfo",
    "TieError",
    "TieGuard",
    "TieInfo",
    "UnknownNameError",
    "check",
    "checkpoint_groups",
    "count_parameters",
    "grad_contributions",
    "is_tied",
    "load",
    "retie",
    "save",
    "shared_groups",
    "storage_aliases",
    "tie",
    "training_state_bytes",
    "untie",
]
