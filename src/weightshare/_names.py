"""Resolve parameter names of a model (internal helpers)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._errors import NotAParameterError, UnknownNameError


@dataclass(frozen=True)
class Miss:
    """Why a name does not resolve to a parameter; ``reason`` is empty if unknown."""

    reason: str


def named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """All ``(name, parameter)`` pairs, tied parameters once per name."""
    return list(model.named_parameters(remove_duplicate=False))


def identity_groups(pairs: Iterable[tuple[str, object]]) -> list[list[str]]:
    """Names grouped by the identity of their object, in first-seen order."""
    groups: dict[int, list[str]] = {}
    for name, obj in pairs:
        groups.setdefault(id(obj), []).append(name)
    return list(groups.values())


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The module that would hold ``name`` and the attribute, or None."""
    prefix, _, attr = name.rpartition(".")
    try:
        return model.get_submodule(prefix), attr
    except AttributeError:
        return None


def lookup(model: nn.Module, name: str) -> nn.Parameter | Miss:
    """The parameter at ``name``, or a :class:`Miss` saying what is there instead."""
    found = owner(model, name)
    if found is None:
        return Miss("")
    module, attr = found
    param = module._parameters.get(attr)
    if param is not None:
        return param
    return Miss(describe(module, name.rpartition(".")[0], attr))


def describe(module: nn.Module, prefix: str, attr: str) -> str:
    """What ``module.attr`` is when it is not a parameter ("" when nothing)."""
    cls = parametrize.type_before_parametrizations(module).__name__
    where = f"{cls} {prefix!r}" if prefix else f"the root {cls}"
    if attr in module._parameters:
        return f"registered on {where} but set to None"
    if attr in module._buffers:
        return f"a buffer of {where}"
    if attr in module._modules:
        sub = module._modules[attr]
        return f"a submodule ({type(sub).__name__}) of {where}"
    if parametrize.is_parametrized(module, attr):
        originals = _original_names(module, prefix, attr)
        return f"computed by a parametrization of {where} from {originals}"
    if attr in vars(module):
        value = vars(module)[attr]
        kind = "tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        return f"a plain {kind} attribute of {where}"
    return ""


def plist(module: nn.Module, attr: str) -> parametrize.ParametrizationList:
    """The ParametrizationList of ``module.attr`` (which must be parametrized)."""
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists[attr])


def _original_names(module: nn.Module, prefix: str, attr: str) -> str:
    params = plist(module, attr)._parameters
    base = f"{prefix}.parametrizations.{attr}" if prefix else f"parametrizations.{attr}"
    return or_list([f"{base}.{key}" for key in params], "and")


def or_list(items: list[str], word: str = "or") -> str:
    """``'a', 'b' or 'c'`` (items are quoted with repr unless already quoted)."""
    quoted = [item if item.startswith("'") else repr(item) for item in items]
    if len(quoted) <= 1:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} {word} {quoted[-1]}"


def unknown_error(model: nn.Module, name: str) -> UnknownNameError:
    """An UnknownNameError for ``name`` with close-match suggestions."""
    names = [n for n, _ in named(model)]
    matches = difflib.get_close_matches(name, names, n=3)
    if matches:
        hint = f"did you mean {or_list(matches)}?"
    elif names:
        hint = f"see model.named_parameters() for its {len(names)} parameter names"
    else:
        hint = "the model has no parameters at all"
    return UnknownNameError(f"model has no parameter {name!r}; {hint}", name, matches)


def get_parameter(model: nn.Module, name: str, arg: str = "") -> nn.Parameter:
    """The parameter at ``name``; raise UnknownNameError / NotAParameterError.

    ``arg`` (e.g. ``"target"``) names the argument in a NotAParameterError.
    """
    if not isinstance(name, str):
        raise TypeError(f"{arg or 'name'} must be a str, got {type(name).__name__}")
    found = lookup(model, name)
    if isinstance(found, nn.Parameter):
        return found
    if not found.reason:
        raise unknown_error(model, name)
    label = f"{arg}={name!r}" if arg else repr(name)
    raise NotAParameterError(
        f"{label} is {found.reason}, not an nn.Parameter; "
        "only parameters can be tied (see model.named_parameters())"
    )


def set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` into the ``_parameters`` slot of an existing parameter name."""
    found = owner(model, name)
    assert found is not None, name
    module, attr = found
    module._parameters[attr] = value  # type: ignore[assignment]


def first_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> first name``, in ``named_parameters()`` order."""
    first: dict[int, str] = {}
    for name, param in named(model):
        first.setdefault(id(param), name)
    return first
