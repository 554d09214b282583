"""Optimizer parameter groups and parameter lists that hold a shared parameter once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

from ._names import named, owner

__all__ = ["param_groups", "unique_parameters"]

#: ``no_decay(name, module, param) -> bool``: whether ``param``, seen under ``name``
#: in ``module`` (the module that holds it under that name), is exempt from decay.
NoDecayRule = Callable[[str, nn.Module, nn.Parameter], bool]
TiedPolicy = Literal["error", "decay", "no_decay"]
_POLICIES = ("error", "decay", "no_decay")


def unique_parameters(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The given tensors with repeats removed, by identity, in first-seen order.

    Use it where a parameter list is assembled by hand, e.g. from two modules that
    share a weight, before handing it to an optimizer or to
    :func:`torch.nn.utils.clip_grad_norm_`. A parameter listed twice is stepped twice
    by an optimizer, and :func:`~torch.nn.utils.clip_grad_norm_` counts it twice in
    the norm and scales its ``.grad`` twice. ``model.parameters()`` already yields
    each parameter once.

    Parameters
    ----------
    params : iterable of :class:`torch.Tensor`
        Parameters, possibly with repeats (a generator is consumed once).

    Returns
    -------
    list of :class:`torch.Tensor`
        Each distinct object once. Tensors that are merely equal, or views of one
        memory, are different objects and all kept.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    >>> head.weight = emb.weight
    >>> params = [*emb.parameters(), *head.parameters()]
    >>> len(params), len(ws.unique_parameters(params))
    (2, 1)
    >>> emb.weight.grad = torch.full_like(emb.weight, 10.0)
    >>> norm = nn.utils.clip_grad_norm_(ws.unique_parameters(params), max_norm=1.0)
    >>> round(norm.item(), 4), round(emb.weight.grad[0, 0].item(), 4)
    (63.2456, 0.1581)
    """
    seen: dict[int, torch.Tensor] = {}
    for param in params:
        seen.setdefault(id(param), param)
    return list(seen.values())


def _small(name: str, module: nn.Module, param: nn.Parameter) -> bool:
    """The default rule: no decay for parameters of fewer than 2 dimensions."""
    return param.ndim < 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: NoDecayRule | None = None,
    *,
    tied: TiedPolicy = "error",
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups, decay and no decay, each parameter in one.

    The usual split builds two lists by module type or by name. A tied weight, such
    as a language model's embedding that is also its output projection, is then put
    in both lists (an embedding says "no decay", a linear layer says "decay"), and
    the optimizer raises ``ValueError: some parameters appear in more than one
    parameter group``. A split over ``model.named_parameters()`` instead sees only a
    tied weight's first name, so a rule about its other name is silently ignored.
    This function asks ``no_decay`` about *every* name of each parameter
    (``model.named_parameters(remove_duplicate=False)``), groups by identity, and
    settles a disagreement the way ``tied`` says.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model whose parameters to group.
    weight_decay : float
        The decay of the first group; the second group gets 0.0.
    no_decay : ``Callable[[str, Module, Parameter], bool]``, optional
        ``no_decay(name, module, param)``, True for a parameter that must
        not decay, where ``module`` holds ``param`` under the last part of
        ``name``. By default, parameters of fewer than two dimensions (biases and
        normalisation scales) do not decay, and all others do.
    tied : str, default "error"
        One of ``"error"``, ``"decay"`` or ``"no_decay"``: what to do when
        ``no_decay`` answers differently for two names of one parameter: raise a
        ``ValueError`` that names them, or put the parameter in the decay or in
        the no-decay group.

    Returns
    -------
    list of dict
        ``[{"params": [...], "weight_decay": weight_decay},
        {"params": [...], "weight_decay": 0.0}]``, ready for any
        :class:`torch.optim.Optimizer`. Each trainable parameter is in exactly one
        group, once, in the order of ``model.named_parameters()``; a group may be
        empty. Parameters with ``requires_grad=False`` are left out.

    Raises
    ------
    ValueError
        If ``tied`` is not one of its three values, or if it is ``"error"`` and
        ``no_decay`` disagrees with itself about the names of a tied parameter.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "norm": nn.LayerNorm(4),
    ...                        "head": nn.Linear(4, 10, bias=False)})
    >>> model.head.weight = model.emb.weight
    >>> groups = ws.param_groups(model, weight_decay=0.1)
    >>> [len(group["params"]) for group in groups]
    [1, 2]
    >>> optimizer = torch.optim.AdamW(groups)

    A rule by module type disagrees with itself about the tied weight:

    >>> def by_type(name, module, param):
    ...     return param.ndim < 2 or isinstance(module, (nn.Embedding, nn.LayerNorm))
    >>> ws.param_groups(model, 0.1, by_type)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: param_groups(): no_decay gives different answers for the names of \
one tied parameter: 'emb.weight' (Embedding) no decay, 'head.weight' (Linear) \
decay; ...
    >>> groups = ws.param_groups(model, 0.1, by_type, tied="no_decay")
    >>> [len(group["params"]) for group in groups]
    [0, 3]
    """
    if tied not in _POLICIES:
        raise ValueError(
            f"param_groups(): tied must be 'error', 'decay' or 'no_decay', got {tied!r}"
        )
    rule = _small if no_decay is None else no_decay
    answers: dict[int, list[tuple[str, nn.Module, bool]]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in named(model):
        if not param.requires_grad:
            continue
        found = owner(model, name)
        assert found is not None, name  # every listed name has an owning module
        module = found[0]
        params.setdefault(id(param), param)
        answer = bool(rule(name, module, param))
        answers.setdefault(id(param), []).append((name, module, answer))
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for key, param in params.items():
        votes = answers[key]
        if len({answer for _, _, answer in votes}) == 1:
            skip = votes[0][2]
        elif tied == "error":
            raise ValueError(_disagreement(votes))
        else:
            skip = tied == "no_decay"
        (exempt if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


def _disagreement(votes: list[tuple[str, nn.Module, bool]]) -> str:
    """The error message for a tied parameter that ``no_decay`` splits."""
    seen = ", ".join(
        f"{name!r} ({type(module).__name__}) {'no decay' if answer else 'decay'}"
        for name, module, answer in votes
    )
    return (
        "param_groups(): no_decay gives different answers for the names of one tied "
        f"parameter: {seen}; one tensor can be in one group only, so pass "
        "tied='decay' or tied='no_decay' to choose, or make no_decay give one answer "
        "for all names of a parameter"
    )
