"""Exceptions raised by :mod:`weightshare`.

All of them derive from the built-in exception a caller would catch anyway
(``ValueError``, ``TypeError`` or ``RuntimeError``):

>>> import weightshare as ws
>>> issubclass(ws.TieError, ValueError), issubclass(ws.NotAParameterError, TypeError)
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BrokenTieError",
    "CheckpointError",
    "NotAParameterError",
    "TieError",
    "UnknownNameError",
]


class TieError(ValueError):
    """A tie that cannot be made: shapes, dtypes, devices or requires_grad differ.

    Raised by :func:`weightshare.tie` and :func:`weightshare.retie` before anything
    in the model is changed. The message names both parameters and their shapes,
    dtypes, devices or ``requires_grad`` flags, and says what to do.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.Linear(3, 3)})
    >>> ws.tie(model, "b.weight", "a.weight")
    Traceback (most recent call last):
    ...
    weightshare.TieError: cannot tie target 'b.weight' to source 'a.weight': \
target has shape (3, 3) but source has shape (3, 2); tie only parameters of the \
same shape
    """

    __module__ = "weightshare"


class UnknownNameError(ValueError):
    """A name that is not a parameter (nor anything else) of the model.

    The message suggests up to three close matches from
    ``model.named_parameters(remove_duplicate=False)``.

    Attributes
    ----------
    name : str
        The name that was looked up.
    suggestions : list of str
        The close matches offered in the message (possibly empty).

    Examples
    --------
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> ws.is_tied("0.weigt", "0.weight", model)
    Traceback (most recent call last):
    ...
    weightshare.UnknownNameError: model has no parameter '0.weigt'; \
did you mean '0.weight'?
    """

    __module__ = "weightshare"

    def __init__(self, message: str, name: str, suggestions: Sequence[str]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)

    def __reduce__(self) -> tuple[type[UnknownNameError], tuple[str, str, list[str]]]:
        return (type(self), (str(self), self.name, self.suggestions))


class NotAParameterError(TypeError):
    """A name that exists in the model but is not an :class:`~torch.nn.Parameter`.

    For example a buffer, a submodule, a plain tensor attribute or a tensor
    computed by a parametrization. The message says which of these it is.

    Examples
    --------
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential(nn.BatchNorm1d(2))
    >>> ws.is_tied("0.running_mean", "0.weight", model)
    Traceback (most recent call last):
    ...
    weightshare.NotAParameterError: a='0.running_mean' is a buffer of \
BatchNorm1d '0', not an nn.Parameter; only parameters can be tied \
(see model.named_parameters())
    """

    __module__ = "weightshare"


class BrokenTieError(RuntimeError):
    """Raised by :class:`weightshare.TieGuard` when recorded ties no longer hold.

    Attributes
    ----------
    broken : list of list of str
        The recorded groups that are no longer one :class:`~torch.nn.Parameter` object.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    >>> _ = ws.tie(model, "b.weight", "a.weight")
    >>> guard = ws.TieGuard(model)
    >>> model.b.weight = nn.Parameter(torch.zeros(2, 2))
    >>> try:
    ...     guard.check()
    ... except ws.BrokenTieError as err:
    ...     print(err.broken)
    [['a.weight', 'b.weight']]
    """

    __module__ = "weightshare"

    def __init__(self, message: str, broken: Sequence[Sequence[str]]) -> None:
        super().__init__(message)
        self.broken: list[list[str]] = [list(group) for group in broken]

    def __reduce__(self) -> tuple[type[BrokenTieError], tuple[str, list[list[str]]]]:
        return (type(self), (str(self), self.broken))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into (or saved from) the model.

    Raised for unreadable, corrupt or truncated files, tied keys that disagree,
    shape or dtype mismatches and (in strict mode) missing or unexpected keys.
    :func:`weightshare.load` raises it before changing anything in the model, and
    :func:`weightshare.check` for an input it cannot read.

    Examples
    --------
    >>> import os, tempfile
    >>> from torch import nn
    >>> import weightshare as ws
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "junk.safetensors")
    ...     with open(path, "wb") as f:
    ...         _ = f.write(b"not a checkpoint")
    ...     ws.load(nn.Linear(2, 2), path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightshare.CheckpointError: could not read checkpoint '...junk.safetensors': ...
    """

    __module__ = "weightshare"
