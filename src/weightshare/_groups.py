"""Find which parameter names share one Parameter object or share memory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._names import get_parameter, identity_groups, named
from ._unionfind import UnionFind

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
    """Groups of names whose *different* Parameter objects share memory.

    This finds ties made the fragile way: ``nn.Parameter(a.weight.data.t())``,
    slices or views of another parameter, or ``b.weight.data = a.weight.data``.
    Two parameters are aliases when at least one byte of memory belongs to an
    element of each, so a write to that element through one shows in the other.
    Views that only interleave, such as ``W[:, 0::2]`` and ``W[:, 1::2]``, share no
    element and are not aliases, although their byte ranges overlap.

    Aliases share values now but are separate leaves: each gets its own ``.grad``
    and its own optimizer update. Optimizer steps work in place and keep them
    aliased (so does a plain ``load_state_dict``), but a conversion that makes new
    tensors, such as ``model.double()`` or ``model.to(other_device)``, or
    ``load_state_dict(..., assign=True)``, gives each its own copy and silently
    separates them.

    Only shapes, strides and offsets are read, never values, so this works on
    the meta device too (every meta tensor has its own storage unless it is a
    view of another).

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to inspect.

    Returns
    -------
    list of list of str
        One entry per Parameter object (its first name); two are in one group when
        they share memory, directly or through a chain of others (the two halves
        of a matrix and a slice across both are one group). Only groups of two or
        more. Ordered like :func:`shared_groups`. Names that are one object (true
        ties) appear once.

    Notes
    -----
    Whether two strided views share a byte is a small integer problem (a bounded
    linear Diophantine equation in the views' indices, as in
    ``numpy.shares_memory``), solved exactly by a depth-first search that
    keeps nothing but the current path in memory. Transposes, slices and views
    interleaved with one step take a few steps whatever their size; views with
    different steps (every 6th row against every 4th) take about one step per
    row. If the search passes 1,000,000 steps, the pair is counted as aliases
    because their byte ranges overlap.

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

    Interleaved columns of one matrix share no element:

    >>> w = torch.zeros(4, 6)
    >>> halves = nn.ParameterDict({"even": w[:, 0::2], "odd": w[:, 1::2]})
    >>> ws.storage_aliases(halves)
    []
    """
    unique: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in named(model):
        unique.setdefault(id(param), (name, param))
    order = {name: i for i, (name, _) in enumerate(unique.values())}
    by_storage: dict[int, list[tuple[_View, str]]] = {}
    for name, param in unique.values():
        view = _view(param)
        if view is not None:
            by_storage.setdefault(view.storage, []).append((view, name))
    groups = [g for views in by_storage.values() for g in _components(views)]
    groups = [sorted(g, key=order.__getitem__) for g in groups if len(g) > 1]
    return sorted(groups, key=lambda g: order[g[0]])


_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class _View:
    """Where a tensor's elements lie in its storage, in bytes.

    Element ``i`` starts at ``start + sum(i_k * stride_k)`` over ``dims``
    (``(stride, size - 1)`` pairs; dimensions of size 1 or stride 0 left out)
    and covers ``elem`` bytes.
    """

    storage: int
    start: int
    elem: int
    dims: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """One past the last byte of the last element."""
        return self.start + sum(s * n for s, n in self.dims) + self.elem


def _view(tensor: torch.Tensor) -> _View | None:
    """The byte layout of a strided, non-empty tensor; None otherwise.

    Uses the storage's C pointer (``_cdata``) rather than ``data_ptr()``, which is
    0 for every tensor on the meta device.
    """
    if tensor.numel() == 0 or tensor.layout != torch.strided:
        return None
    elem = tensor.element_size()
    pairs = zip(tensor.stride(), tensor.shape, strict=True)
    dims = tuple((s * elem, n - 1) for s, n in pairs if n > 1 and s != 0)
    storage: int = tensor.untyped_storage()._cdata
    return _View(storage, int(tensor.storage_offset()) * elem, elem, dims)


def _components(views: list[tuple[_View, str]]) -> list[list[str]]:
    """Connected components of the views that share a byte.

    A sweep over start bytes pairs only views whose byte ranges overlap; each
    such pair is then decided exactly by :func:`_share`.
    """
    sets: UnionFind[str] = UnionFind(name for _, name in views)
    ordered = sorted(views, key=lambda v: (v[0].start, v[1]))
    for i, (a, name_a) in enumerate(ordered):
        for b, name_b in ordered[i + 1 :]:
            if b.start >= a.end:
                break
            if sets.find(name_a) != sets.find(name_b) and _share(a, b):
                sets.union(name_a, name_b)
    components: dict[str, list[str]] = {}
    for _, name in ordered:
        components.setdefault(sets.find(name), []).append(name)
    return list(components.values())


def _share(a: _View, b: _View) -> bool:
    """Whether some byte belongs to an element of ``a`` and an element of ``b``.

    With ``x`` an element start of ``a`` and ``y`` one of ``b``, they share a byte
    iff ``-(a.elem - 1) <= x - y <= b.elem - 1``. Writing ``y`` with reversed
    indices ``n_k - j_k`` and the slack as a last unknown makes every term
    non-negative: ``sum(c_k * x_k) = rhs`` with ``0 <= x_k <= bound_k``.
    """
    terms: dict[int, int] = {}
    for stride, bound in (*a.dims, *b.dims, (1, a.elem + b.elem - 2)):
        if bound:
            terms[stride] = terms.get(stride, 0) + bound
    rhs = b.start - a.start + sum(s * n for s, n in b.dims) + b.elem - 1
    ordered = sorted(terms.items(), reverse=True)
    try:
        return _solve(ordered, rhs, _tails(ordered), [_MAX_STEPS])
    except _TooHard:
        return True


class _TooHard(Exception):
    """The search for a shared byte passed ``_MAX_STEPS`` steps."""


def _tails(terms: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each position: the largest sum and the gcd of the terms from there on."""
    tails = [(0, 0)]
    for c, bound in reversed(terms):
        top, g = tails[-1]
        tails.append((top + c * bound, math.gcd(g, c)))
    return tails[::-1]


def _solve(
    terms: list[tuple[int, int]],
    rhs: int,
    tails: list[tuple[int, int]],
    steps: list[int],
    i: int = 0,
) -> bool:
    """Whether ``sum(c * x) == rhs`` over ``terms[i:]`` with ``0 <= x <= bound``.

    Depth-first over the term with the largest coefficient: its value must leave a
    remainder that the other terms can reach, that is at most their largest sum
    and a multiple of their gcd (which fixes it modulo ``g / gcd(c, g)``).
    """
    steps[0] -= 1
    if steps[0] < 0:
        raise _TooHard
    if i == len(terms):
        return rhs == 0
    c, bound = terms[i]
    rest_max, g = tails[i + 1]
    low, high = max(0, -((rest_max - rhs) // c)), min(bound, rhs // c)
    if g == 0:
        return low <= high and rhs % c == 0
    d = math.gcd(c, g)
    if rhs % d:
        return False
    step = g // d
    first = (rhs // d) * pow(c // d, -1, step) % step
    for x in range(low + (first - low) % step, high + 1, step):
        if _solve(terms, rhs - c * x, tails, steps, i + 1):
            return True
    return False


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
