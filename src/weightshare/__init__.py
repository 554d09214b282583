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
from ._fsdp import fsdp_units
from ._grad import grad_contributions
from ._groups import is_tied, shared_groups, storage_aliases
from ._guard import TieGuard
from ._optim import param_groups, unique_parameters
from ._tie import retie, tie, untie

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
    "fsdp_units",
    "grad_contributions",
    "is_tied",
    "load",
    "param_groups",
    "retie",
    "save",
    "shared_groups",
    "storage_aliases",
    "tie",
    "training_state_bytes",
    "unique_parameters",
    "untie",
]
