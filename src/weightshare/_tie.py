"""Tie and untie parameters by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._errors import TieError
from ._names import (
    first_names,
    get_parameter,
    named,
    owner,
    plist,
    set_parameter,
)

__all__ = ["retie", "tie", "untie"]


class Transpose(nn.Module):
    """The parametrization ``W -> Wᵀ`` behind ``tie(..., transpose=True)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()


def tie(
    model: nn.Module, target: str, source: str, *, transpose: bool = False
) -> nn.Parameter:
    """Make the parameter at ``target`` the very Parameter at ``source``.

    The direction matters: **source's values survive, target's are discarded**.
    Afterwards both names refer to one :class:`~torch.nn.Parameter`, so both uses add
    into one ``.grad`` and the optimizer updates one tensor. Only the slot named
    ``target`` changes; other names that shared the old target keep it.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model holding both parameters.
    target : str
        Name of the parameter to replace, e.g. ``"lm_head.weight"``.
    source : str
        Name of the parameter to share, e.g. ``"transformer.wte.weight"``.
    transpose : bool, default False
        Tie ``target`` to ``sourceᵀ`` (e.g. a decoder ``nn.Linear(d, n)`` to an
        encoder ``nn.Linear(n, d)``). This registers a parametrization with
        :func:`torch.nn.utils.parametrize.register_parametrization` whose
        ``original`` *is* the source Parameter, so :func:`shared_groups` reports
        ``[source, "<module>.parametrizations.<attr>.original"]`` and the
        gradients of both uses land in one ``.grad``.

    Returns
    -------
    :class:`torch.nn.Parameter`
        The shared Parameter (the one at ``source``).

    Raises
    ------
    weightshare.UnknownNameError
        If a name is not in the model (the message suggests close matches).
    weightshare.NotAParameterError
        If a name is a buffer, a submodule or a plain tensor attribute.
    weightshare.TieError
        If shapes, dtypes, devices or ``requires_grad`` differ; for shapes that
        match once transposed, the message says ``pass transpose=True to tie W
        and Wᵀ``. Nothing is changed when an error is raised.

    Notes
    -----
    If ``target`` is ``source``, or the two are already one object, nothing
    changes and the parameter is returned.

    A tie is one Parameter with one ``requires_grad``, so a frozen target is
    never silently made trainable (nor a trainable one frozen): set the same flag
    on both first, e.g. ``model.get_parameter(name).requires_grad_(False)``.

    An optimizer created *before* the tie still holds the old target Parameter,
    which is no longer in the model: it keeps updating a tensor nobody uses.
    Tie first, then create the optimizer (or rebuild it).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                        "head": nn.Linear(4, 10, bias=False)})
    >>> shared = ws.tie(model, "head.weight", "emb.weight")
    >>> shared is model.emb.weight is model.head.weight
    True
    >>> ws.shared_groups(model)
    [['emb.weight', 'head.weight']]

    With ``transpose=True`` the target becomes a view ``sourceᵀ``:

    >>> model = nn.ModuleDict({"enc": nn.Linear(6, 3), "dec": nn.Linear(3, 6)})
    >>> _ = ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    >>> ws.shared_groups(model)
    [['enc.weight', 'dec.parametrizations.weight.original']]
    >>> torch.equal(model.dec.weight, model.enc.weight.T)
    True
    """
    if transpose:
        return _tie_transposed(model, target, source)
    tgt = get_parameter(model, target, "target")
    src = get_parameter(model, source, "source")
    if tgt is src:
        return src
    _check(f"target {target!r}", tgt, f"source {source!r}", src, transpose=False)
    set_parameter(model, target, src)
    return src


def _tie_transposed(model: nn.Module, target: str, source: str) -> nn.Parameter:
    site = _transposed_site(model, target)
    if site is not None:
        return _already_transposed(model, target, source, plist(*site).original)
    tgt = get_parameter(model, target, "target")
    src = get_parameter(model, source, "source")
    if tgt is src:
        raise TieError(
            f"cannot tie target {target!r} to the transpose of itself; "
            "pass two different names"
        )
    _check(f"target {target!r}", tgt, f"source {source!r}", src, transpose=True)
    found = owner(model, target)
    assert found is not None
    module, attr = found
    module._parameters[attr] = nn.Parameter(src.detach().t(), src.requires_grad)
    try:
        parametrize.register_parametrization(module, attr, Transpose(), unsafe=True)
    except BaseException:
        module._parameters[attr] = tgt
        raise
    plist(module, attr)._parameters["original"] = src
    return src


def _already_transposed(
    model: nn.Module, target: str, source: str, original: torch.Tensor
) -> nn.Parameter:
    """No-op if ``target`` is already ``sourceᵀ``; TieError if another's."""
    src = get_parameter(model, source, "source")
    if original is src:
        return src
    other = first_names(model).get(id(original), "another parameter")
    raise TieError(
        f"cannot tie target {target!r} to the transpose of source {source!r}: it "
        f"is already tied to the transpose of {other!r}; call "
        f"weightshare.untie(model, {target!r}) first"
    )


def _check(
    tname: str, tgt: torch.Tensor, sname: str, src: torch.Tensor, *, transpose: bool
) -> None:
    """Raise TieError unless ``tgt`` can become ``src`` (or ``srcᵀ``).

    Also when their ``requires_grad`` differ: tying would silently change the
    flag of the target's name, freezing or unfreezing it.
    """
    head = f"cannot tie {tname} to {sname}"
    if transpose and src.dim() != 2:
        raise TieError(
            f"{head}: transpose=True needs a 2-D source, but the source has shape "
            f"{_shape(src)}; pass transpose=False"
        )
    want = src.shape[::-1] if transpose else src.shape
    if tgt.shape != want:
        raise TieError(
            f"{head}: target has shape {_shape(tgt)} but source"
            f"{' transposed' if transpose else ''} has shape {tuple(want)}; "
            f"{_shape_hint(tgt, src, transpose)}"
        )
    if tgt.dtype != src.dtype:
        raise TieError(
            f"{head}: target has dtype {tgt.dtype} but source has dtype {src.dtype}; "
            "convert one first, e.g. model.to(torch.float32)"
        )
    if tgt.device != src.device:
        raise TieError(
            f"{head}: target is on device {tgt.device} but source is on "
            f"{src.device}; move the model to one device first with model.to(device)"
        )
    if tgt.requires_grad != src.requires_grad:
        raise TieError(
            f"{head}: target has requires_grad={tgt.requires_grad} but source has "
            f"requires_grad={src.requires_grad}, and a tie is one Parameter with one "
            "flag; set the one you want on both first: call .requires_grad_(False) "
            "on both to freeze the tie, or .requires_grad_(True) on both to train it"
        )


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _shape_hint(tgt: torch.Tensor, src: torch.Tensor, transpose: bool) -> str:
    if transpose and tgt.shape == src.shape:
        return "the shapes match as they are: pass transpose=False"
    if not transpose and src.dim() == 2 and tgt.shape == src.shape[::-1]:
        return "pass transpose=True to tie W and Wᵀ"
    return "tie only parameters of the same shape"


def _transposed_site(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """``(module, attr)`` if ``name`` is a transposed tie made by :func:`tie`.

    ``name`` may be the parametrized tensor (``"dec.weight"``) or its original
    (``"dec.parametrizations.weight.original"``).
    """
    parts = name.split(".")
    if parts[-1] == "original" and len(parts) >= 3 and parts[-3] == "parametrizations":
        name = ".".join([*parts[:-3], parts[-2]])
    found = owner(model, name)
    if found is None or not parametrize.is_parametrized(*found):
        return None
    chain = plist(*found)
    is_ours = len(chain) == 1 and isinstance(chain[0], Transpose)
    return found if is_ours else None


def _transposed_uses(
    model: nn.Module, param: nn.Parameter
) -> list[tuple[nn.Module, str]]:
    """``(module, attr)`` of each transposed tie made by :func:`tie` from ``param``.

    One entry per name under which the model reaches the tie, so a module reused
    at two places counts twice (as its names do in ``named_parameters``).
    """
    found = []
    for name, p in named(model):
        site = _transposed_site(model, name) if p is param else None
        if site is not None:
            found.append(site)
    return found


def untie(model: nn.Module, name: str) -> nn.Parameter:
    """Give ``name`` its own independent copy of the parameter it shares.

    The new parameter is ``nn.Parameter(p.detach().clone(),
    requires_grad=p.requires_grad)``: same values now, separate from then on.
    The other names keep the original object.

    A transposed tie made by ``tie(model, "dec.weight", "enc.weight",
    transpose=True)`` is undone by any of its names: the parametrized one
    (``"dec.weight"``), its original (``"dec.parametrizations.weight.original"``)
    or the source (``"enc.weight"``). The parametrization is removed,
    ``dec.weight`` becomes a plain parameter of its own shape holding the current
    transposed value, and ``enc.weight`` keeps its Parameter, so the model's
    state dict has the keys and shapes of one that was never tied. When the
    source is also tied plainly to other names, untying it gives it its own
    copy instead, and the transposed tie stays with those names.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model holding the parameter.
    name : str
        The name to untie.

    Returns
    -------
    :class:`torch.nn.Parameter`
        The parameter now at ``name``: for a removed transposed tie, the source
        (``enc.weight``) when ``name`` is the source, else the parametrized name's
        new plain parameter (``dec.weight``, also for its former original). If
        ``name`` was not shared and is no transposed tie, nothing changes and the
        existing parameter is returned.

    Raises
    ------
    weightshare.UnknownNameError
        If ``name`` is not in the model.
    weightshare.NotAParameterError
        If ``name`` is a buffer, a submodule or a plain attribute.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    >>> _ = ws.tie(model, "b.weight", "a.weight")
    >>> new = ws.untie(model, "b.weight")
    >>> ws.shared_groups(model), torch.equal(new, model.a.weight)
    ([], True)

    >>> model = nn.ModuleDict({"enc": nn.Linear(6, 3), "dec": nn.Linear(3, 6)})
    >>> _ = ws.tie(model, "dec.weight", "enc.weight", transpose=True)
    >>> ws.untie(model, "enc.weight") is model.enc.weight  # or "dec.weight"
    True
    >>> ws.shared_groups(model), model.dec.weight.shape
    ([], torch.Size([6, 3]))
    >>> sorted(model.state_dict())  # as if never tied
    ['dec.bias', 'dec.weight', 'enc.bias', 'enc.weight']
    """
    site = _transposed_site(model, name)
    if site is not None:
        return _untie_transposed(*site)
    param = get_parameter(model, name, "name")
    sites = _transposed_uses(model, param)
    others = [n for n, p in named(model) if p is param and n != name]
    if len(others) > len(sites):  # tied plainly too: only ``name`` leaves the tie
        new = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        set_parameter(model, name, new)
        return new
    for module, attr in sites:
        if parametrize.is_parametrized(module, attr):  # once for a reused module
            _untie_transposed(module, attr)
    return param


def _untie_transposed(module: nn.Module, attr: str) -> nn.Parameter:
    """Replace ``module.attr = originalᵀ`` by a plain parameter with its value.

    Done whether or not the original is still shared: the parametrization is the
    tie, and ``module.attr`` must get a tensor of its own shape either way.
    """
    chain = plist(module, attr)
    original = cast(nn.Parameter, chain.original)
    value = original.detach().t().clone(memory_format=torch.contiguous_format)
    chain._parameters["original"] = nn.Parameter(value, original.requires_grad)
    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    param = module._parameters[attr]
    assert param is not None
    return param


def retie(model: nn.Module, groups: Sequence[Sequence[str]]) -> None:
    """Tie each group of names again: every name becomes the group's FIRST one.

    The Parameter at each group's **first name survives (its values are kept)**;
    the others are replaced by it. Use it to repair ties that ``to_empty()`` or
    ``load_state_dict(..., assign=True)`` broke, or replacing a submodule by its
    deep copy (``model.head = copy.deepcopy(model.head)``: the copy has its own
    weight), with the groups recorded earlier by :class:`TieGuard` or
    :func:`shared_groups`. A ``copy.deepcopy`` of the whole model keeps its ties
    (its memo copies a shared Parameter once). All groups are validated first; if
    any is invalid nothing is changed.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to repair.
    groups : list of list of str
        Groups of names, e.g. ``guard.groups``.

    Raises
    ------
    weightshare.UnknownNameError
        If a name is not in the model.
    weightshare.NotAParameterError
        If a name is not a parameter (e.g. a weight now computed by a
        parametrization).
    weightshare.TieError
        If shapes, dtypes, devices or ``requires_grad`` within a group differ.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> with torch.device("meta"):
    ...     model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                            "head": nn.Linear(4, 10, bias=False)})
    ...     _ = ws.tie(model, "head.weight", "emb.weight")
    >>> groups = ws.shared_groups(model)
    >>> _ = model.to_empty(device="cpu")  # materialises each name separately
    >>> ws.shared_groups(model)
    []
    >>> ws.retie(model, groups)
    >>> ws.shared_groups(model)
    [['emb.weight', 'head.weight']]
    """
    plan = [_validate_group(model, group) for group in groups]
    for names, params in plan:
        for name in names[1:]:
            set_parameter(model, name, params[0])


def _validate_group(
    model: nn.Module, group: Sequence[str]
) -> tuple[list[str], list[nn.Parameter]]:
    if isinstance(group, str):
        raise TypeError(
            f"groups must be a sequence of lists of names, but one group is the str "
            f"{group!r}; wrap it: [[...]]"
        )
    names = list(group)
    params = [get_parameter(model, name) for name in names]
    for name, param in zip(names[1:], params[1:], strict=True):
        first = f"{names[0]!r} (group {names})"
        _check(repr(name), param, first, params[0], transpose=False)
    return names, params
