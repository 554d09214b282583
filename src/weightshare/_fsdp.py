"""Group modules for FSDP2's ``fully_shard`` so that tied parameters share a group."""

from __future__ import annotations

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
    above), the module that holds that name joins the unit; when the model's root
    holds it directly, the tied modules are left out, so that the last call,
    ``fully_shard(model)``, shards them with the root. A unit made of a module and
    modules inside it becomes the outer module alone, and it comes after the
    units inside it (FSDP2 shards inner modules first). No process group is
    needed: only the model's structure is read.

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
    paths = _paths(model, listed)
    holders: dict[int, list[int]] = {}  # id(parameter) -> indices into `listed`
    outside: dict[int, list[str]] = {}  # id(parameter) -> names no listed module holds
    for name, param in named(model):
        index = _holder(name, paths)
        if index is None:
            outside.setdefault(id(param), []).append(name)
        elif index not in holders.setdefault(id(param), []):
            holders[id(param)].append(index)
    extra: list[nn.Module] = []  # holders of outside names that join a unit
    sets: UnionFind[int] = UnionFind(range(len(listed)))
    dropped: set[int] = set()
    for key, indices in holders.items():
        owners = [_owner(model, name) for name in outside.get(key, [])]
        if any(owner is model for owner in owners):
            dropped.update(indices)  # the root holds it: leave the tie to the root
            continue
        for owner in owners:
            if all(owner is not m for m in extra):
                extra.append(owner)
                sets.add(len(listed) + len(extra) - 1)
            indices = [*indices, _index(owner, listed, extra)]
        for index in indices[1:]:
            sets.union(indices[0], index)
    return _order(_groups(listed + extra, sets, dropped))


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
    """The module that registers the parameter ``name``."""
    return model.get_submodule(name.rpartition(".")[0])


def _index(module: nn.Module, listed: list[nn.Module], extra: list[nn.Module]) -> int:
    """Position of ``module`` in ``listed + extra`` (by identity)."""
    every = listed + extra
    return next(i for i, m in enumerate(every) if m is module)


def _groups(
    modules: list[nn.Module], sets: UnionFind[int], dropped: set[int]
) -> list[list[nn.Module]]:
    """Modules grouped by their set, in order of first module; outer modules only."""
    dropped_roots = {sets.find(i) for i in dropped}
    groups: dict[int, list[nn.Module]] = {}
    for i, module in enumerate(modules):
        root = sets.find(i)
        if root not in dropped_roots:
            groups.setdefault(root, []).append(module)
    return [_outermost(group) for group in groups.values()]


def _outermost(group: list[nn.Module]) -> list[nn.Module]:
    """The modules of ``group`` that no other module of ``group`` contains."""
    return [m for m in group if not any(o is not m and _contains(o, m) for o in group)]


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(sub is inner for sub in outer.modules())


def _order(groups: list[list[nn.Module]]) -> list[Unit]:
    """Units in the given order, each after the units nested inside it."""
    done: list[list[nn.Module]] = []

    def visit(group: list[nn.Module]) -> None:
        if any(group is g for g in done):
            return
        for other in groups:
            nested = any(_contains(o, m) for o in group for m in other)
            if other is not group and nested:
                visit(other)
        done.append(group)

    for group in groups:
        visit(group)
    return [group[0] if len(group) == 1 else group for group in done]
