"""Group modules for FSDP2's ``fully_shard`` so that tied parameters share a group."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from torch import nn

from ._names import named
from ._unionfind import UnionFind

__all__ = ["fsdp_units"]

Unit = nn.Module | list[nn.Module]


def fsdp_units(model: nn.Module, modules: Iterable[nn.Module]) -> list[Unit]:
    """The units to pass to ``fully_shard`` one by one, with each tie in one unit.

    FSDP2's ``fully_shard`` puts the parameters of each call in one group, and a
    parameter that two groups hold (a tied embedding and output projection sharded
    separately) fails at the first forward. Give the modules you would shard one
    by one, for example ``[model.wte, *model.blocks, model.lm_head]``; modules whose
    parameters are tied come back merged into one list, which ``fully_shard`` shards
    as one group. Then::

        for unit in weightshare.fsdp_units(model, modules):
            fully_shard(unit)
        fully_shard(model)

    A parameter counts for the innermost listed module around each of its names.
    When a tie also reaches a module that is not listed (``lm_head`` left out
    above), the module that holds that name joins the unit, and so does what
    its own parameters are tied to; when the model's root holds it directly, the
    tied modules are left out, so that the last call, ``fully_shard(model)``,
    shards them with the root. A unit made of a module and
    modules inside it becomes the outer module alone, and it comes after the
    units inside it: ``fully_shard`` manages every module below the ones it is
    given, except those sharded before. Units that would each have to come
    first, because each holds a module of the other (``a`` holds ``b``, ``d``
    holds ``e``, with ``a`` tied to ``e`` and ``b`` to ``d``; or a listed module
    between two tied ones), are merged into one unit, here ``[a, d]``: in any
    order, the first would take a parameter of the second. A unit holding a
    module whose tie is left to the root is left to the root too. No process
    group is needed: only the model's structure is read.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The whole model (the root you shard last).
    modules : iterable of :class:`torch.nn.Module`
        Submodules of ``model``, each once, in the order you would shard them.

    Returns
    -------
    list of :class:`torch.nn.Module` or list of :class:`torch.nn.Module`
        A module where it shares nothing with another unit, a list of modules (in
        the order given, added holders last) where it does. Units keep the order of
        their first module, except that a unit comes after the units inside it.

    Raises
    ------
    TypeError
        If an entry of ``modules`` is not an :class:`~torch.nn.Module`.
    ValueError
        If an entry is not a submodule of ``model``, is ``model`` itself, or is
        listed twice.

    Examples
    --------
    >>> import weightshare as ws
    >>> from weightshare.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=16, context=4, n_layer=2, n_head=2,
    ...                       d_model=8))
    >>> units = ws.fsdp_units(model, [model.wte, *model.blocks, model.lm_head])
    >>> units[0] == [model.wte, model.lm_head]  # the tied pair: one group
    True
    >>> units[1:] == [model.blocks[0], model.blocks[1]]
    True
    >>> ws.fsdp_units(model, [model.wte])  # lm_head joins the tie
    [[Embedding(16, 8), Linear(in_features=8, out_features=16, bias=False)]]
    """
    listed = _check(model, list(modules))
    nodes, sets = _tie_sets(model, listed)
    _merge_cycles(nodes, sets)
    groups = sets.groups()
    root = next((g for g in groups if any(nodes[i] is model for i in g)), None)
    kept = [g for g in groups if g is not root]  # the root's set is left to the root
    return [_unit(nodes, group) for group in _order(nodes, kept)]


def _tie_sets(
    model: nn.Module, listed: list[nn.Module]
) -> tuple[list[nn.Module], UnionFind[int]]:
    """The modules involved, and sets of their indices joining those that share.

    ``nodes`` is ``listed``, then the modules that hold a tied name no listed module
    holds (the model itself when it holds one directly). A module added so has
    parameters of its own, which may be tied elsewhere in turn: the sets are
    computed again with it among the holders, until no module is added.
    """
    nodes = list(listed)
    while True:
        count = len(nodes)
        paths = _paths(model, nodes)
        holders: dict[int, list[int]] = {}  # id(parameter) -> indices into `nodes`
        outside: dict[int, list[str]] = {}  # id(parameter) -> names no node holds
        for name, param in named(model):
            index = _holder(name, paths)
            if index is None:
                outside.setdefault(id(param), []).append(name)
            elif index not in holders.setdefault(id(param), []):
                holders[id(param)].append(index)
        sets: UnionFind[int] = UnionFind(range(count))
        for key, indices in holders.items():
            for name in outside.get(key, []):
                indices = [*indices, _node(_owner(model, name), nodes, sets)]
            for index in indices[1:]:
                sets.union(indices[0], index)
        if len(nodes) == count:
            return nodes, sets


def _node(module: nn.Module, nodes: list[nn.Module], sets: UnionFind[int]) -> int:
    """The index of ``module`` in ``nodes`` (by identity), appended when missing."""
    for index, node in enumerate(nodes):
        if node is module:
            return index
    nodes.append(module)
    sets.add(len(nodes) - 1)
    return len(nodes) - 1


def _merge_cycles(nodes: list[nn.Module], sets: UnionFind[int]) -> None:
    """Join the sets that must each be sharded before the other.

    ``fully_shard`` manages every module below the ones it is given, except
    those sharded before, so a set must be sharded before any set holding one
    of its modules. When two sets each hold a module of the other (``a`` holds
    ``b``, ``d`` holds ``e``, with ``a`` tied to ``e`` and ``b`` to ``d``), or a
    chain of sets comes back to its start, no order works: they become one set.
    The model itself holds every module, so a set holding a module of the
    root's set joins the root's.
    """
    groups = sets.groups()
    before = _before(nodes, groups)
    reach = [_reachable(before, g) for g in range(len(groups))]
    for g, h in itertools.combinations(range(len(groups)), 2):
        if h in reach[g] and g in reach[h]:
            sets.union(groups[g][0], groups[h][0])


def _before(nodes: list[nn.Module], groups: list[list[int]]) -> list[set[int]]:
    """For each set, the sets that must be sharded before it (that it holds)."""
    inside = [{id(m) for m in node.modules() if m is not node} for node in nodes]
    return [
        {
            h
            for h, other in enumerate(groups)
            if h != g and any(id(nodes[j]) in inside[i] for i in group for j in other)
        }
        for g, group in enumerate(groups)
    ]


def _reachable(edges: list[set[int]], start: int) -> set[int]:
    """The indices reached from ``start`` by following ``edges`` (not ``start``
    itself unless a cycle leads back to it)."""
    seen: set[int] = set()
    todo = list(edges[start])
    while todo:
        g = todo.pop()
        if g not in seen:
            seen.add(g)
            todo.extend(edges[g])
    return seen


def _check(model: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` after checking each is a distinct, proper submodule of ``model``."""
    inside = {id(m) for m in model.modules()}
    seen: dict[int, int] = {}
    for index, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"modules[{index}] is a {type(module).__name__}, not an nn.Module"
            )
        kind = type(module).__name__
        if module is model:
            raise ValueError(
                f"modules[{index}] is the model itself; list only its submodules and "
                "shard the model last, with fully_shard(model)"
            )
        if id(module) not in inside:
            raise ValueError(
                f"modules[{index}] ({kind}) is not a submodule of the model; pass "
                "modules reached from it, such as model.blocks[0]"
            )
        if id(module) in seen:
            raise ValueError(
                f"modules[{seen[id(module)]}] and modules[{index}] are the same "
                f"{kind}; list each module once"
            )
        seen[id(module)] = index
    return modules


def _paths(model: nn.Module, listed: list[nn.Module]) -> list[tuple[str, int]]:
    """``(path + ".", index)`` for every path of every listed module, longest first.

    A module reused at several places in the model has several paths.
    """
    index = {id(m): i for i, m in enumerate(listed)}
    found = [
        (f"{path}.", index[id(module)])
        for path, module in model.named_modules(remove_duplicate=False)
        if id(module) in index
    ]
    return sorted(found, key=lambda item: -len(item[0]))


def _holder(name: str, paths: list[tuple[str, int]]) -> int | None:
    """The innermost listed module around the parameter ``name``, if any."""
    return next((index for path, index in paths if name.startswith(path)), None)


def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that registers the parameter ``name``.

    For the original of a parametrized parameter
    (``dec.parametrizations.weight.original``) that is the parametrized module
    (``dec``), not the ``ParametrizationList`` holding it, which FSDP cannot
    shard apart from its module.
    """
    path = name.rpartition(".")[0]
    head, _, tail = path.rpartition(".parametrizations.")
    if tail and "." not in tail and name.endswith(".original"):
        return model.get_submodule(head)
    if path.startswith("parametrizations.") and path.count(".") == 1:
        return model
    return model.get_submodule(path)


def _order(nodes: list[nn.Module], groups: list[list[int]]) -> list[list[int]]:
    """The sets in the given order, each after the sets it holds a module of.

    ``groups`` has no cycles (see :func:`_merge_cycles`), so the search ends.
    """
    before = _before(nodes, groups)
    done: list[int] = []

    def visit(g: int) -> None:
        if g not in done:
            for h in sorted(before[g]):
                visit(h)
            done.append(g)

    for g in range(len(groups)):
        visit(g)
    return [groups[g] for g in done]


def _unit(nodes: list[nn.Module], group: list[int]) -> Unit:
    """The modules of ``group`` that no other module of it holds: one, or a list."""
    modules = [nodes[i] for i in group]
    outer = [
        m for m in modules if not any(o is not m and _contains(o, m) for o in modules)
    ]
    return outer[0] if len(outer) == 1 else outer


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(sub is inner for sub in outer.modules())
