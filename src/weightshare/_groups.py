"""Find which parameter names share one Parameter object or one storage."""

from __future__ import annotations

import torch
from torch import nn

from ._names import get_parameter, identity_groups, named

__all__ = ["is_tied", "shared_groups", "storage_aliases"]


def shared_groups(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one :class:`~torch.nn.Parameter` object.

    Two names are in one group when they refer to the very same object (identity,
    ``a is b``), which is what weight tying means in PyTorch: one tensor, one
    ``.grad``, one entry in the optimizer. Only groups of two or more names are
    returned. Nothing is read from the tensors' values, so this works on the meta
    device.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to inspect.

    Returns
    -------
    list of list of str
        The groups, ordered by the position of their first name in
        ``model.named_parameters(remove_duplicate=False)``; names inside a group
        in that same order. Empty if nothing is shared.

    See Also
    --------
    storage_aliases : different Parameter objects that share memory.
    count_parameters : how many elements the sharing saves.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> class TinyLM(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.wte = nn.Embedding(10, 4)
    ...         self.lm_head = nn.Linear(4, 10, bias=False)
    ...         self.lm_head.weight = self.wte.weight
    >>> ws.shared_groups(TinyLM())
    [['wte.weight', 'lm_head.weight']]
    >>> with torch.device("meta"):
    ...     ws.shared_groups(TinyLM())
    [['wte.weight', 'lm_head.weight']]
    """
    return [group for group in identity_groups(named(model)) if len(group) > 1]


def storage_aliases(model: nn.Module) -> list[list[str]]:
    """Groups of names whose *different* Parameter objects overlap in memory.

    This finds ties made the fragile way: ``nn.Parameter(a.weight.data.t())``,
    slices or views of another parameter, or ``b.weight.data = a.weight.data``.
    Such parameters share values now but are separate leaves: each gets its own
    ``.grad``, and ``.to()``, ``load_state_dict`` or an optimizer step on one may
    silently separate them. Storage is identified without reading any data, so
    this works on the meta device too (every meta tensor has its own storage).

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to inspect.

    Returns
    -------
    list of list of str
        One entry per Parameter object (its first name), grouped when their byte
        ranges in one storage overlap; only groups of two or more. Ordered like
        :func:`shared_groups`. Names that are one object (true ties) appear once.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"enc": nn.Linear(3, 4), "dec": nn.Linear(4, 3)})
    >>> model.dec.weight = nn.Parameter(model.enc.weight.data.t())
    >>> ws.storage_aliases(model)
    [['enc.weight', 'dec.weight']]
    >>> ws.shared_groups(model)  # not one object: gradients will not be shared
    []
    """
    unique: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in named(model):
        unique.setdefault(id(param), (name, param))
    order = {name: i for i, (name, _) in enumerate(unique.values())}
    by_storage: dict[int, list[tuple[int, int, str]]] = {}
    for name, param in unique.values():
        span = _byte_span(param)
        if span is not None:
            by_storage.setdefault(span[0], []).append((span[1], span[2], name))
    groups = [g for spans in by_storage.values() for g in _overlapping(spans)]
    groups = [sorted(g, key=order.__getitem__) for g in groups if len(g) > 1]
    return sorted(groups, key=lambda g: order[g[0]])


def _byte_span(tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """``(storage id, first byte, end byte)`` of a tensor's view; None if empty.

    Uses the storage's C pointer (``_cdata``) rather than ``data_ptr()``, which is
    0 for every tensor on the meta device.
    """
    if tensor.numel() == 0 or tensor.layout != torch.strided:
        return None
    size = tensor.element_size()
    pairs = zip(tensor.shape, tensor.stride(), strict=True)
    last = int(sum((n - 1) * s for n, s in pairs))
    start = int(tensor.storage_offset()) * size
    storage: int = tensor.untyped_storage()._cdata
    return storage, start, start + (last + 1) * size


def _overlapping(spans: list[tuple[int, int, str]]) -> list[list[str]]:
    """Connected components of overlapping byte ranges (a sweep over starts)."""
    components: list[list[str]] = []
    end = -1
    for start, stop, name in sorted(spans):
        if start < end:
            components[-1].append(name)
            end = max(end, stop)
        else:
            components.append([name])
            end = stop
    return components


def is_tied(
    a: torch.Tensor | str, b: torch.Tensor | str, model: nn.Module | None = None
) -> bool:
    """Whether ``a`` and ``b`` are the very same Parameter object.

    Parameters
    ----------
    a, b : str or :class:`torch.Tensor`
        Parameters, or their names in ``model``.
    model : :class:`torch.nn.Module`, optional
        Needed to resolve names.

    Returns
    -------
    bool
        ``a is b`` after resolving names. Equal values, or views of the same
        memory (see :func:`storage_aliases`), are *not* ties.

    Raises
    ------
    TypeError
        If a name is given without ``model``.
    weightshare.UnknownNameError
        If a name is not in ``model`` (with close-match suggestions).
    weightshare.NotAParameterError
        If a name is a buffer, a submodule or a plain attribute.

    Examples
    --------
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    >>> ws.is_tied("a.weight", "b.weight", model)
    False
    >>> model.b.weight = model.a.weight
    >>> ws.is_tied("a.weight", "b.weight", model)
    True
    >>> ws.is_tied(model.a.weight, model.b.weight)
    True
    """
    return _resolve(a, "a", model) is _resolve(b, "b", model)


def _resolve(x: torch.Tensor | str, arg: str, model: nn.Module | None) -> object:
    if isinstance(x, torch.Tensor):
        return x
    if not isinstance(x, str):
        raise TypeError(f"{arg} must be a tensor or a name, got {type(x).__name__}")
    if model is None:
        raise TypeError(
            f"is_tied() got the name {x!r} for {arg} but no model to look it up in; "
            "pass model=... (or pass the parameters themselves)"
        )
    return get_parameter(model, x, arg)
