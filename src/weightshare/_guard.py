"""Notice when recorded ties stop holding, and say why.

>>> from torch import nn
>>> import weightshare as ws
>>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
>>> _ = ws.tie(model, "b.weight", "a.weight")
>>> ws.TieGuard(model)
TieGuard(groups=[['a.weight', 'b.weight']])
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._errors import BrokenTieError
from ._groups import shared_groups
from ._names import Miss, lookup, named, owner

__all__ = ["TieGuard"]

Recorded = weakref.ReferenceType[nn.Parameter]

FIX = (
    "Fix: weightshare.retie(model, guard.groups) ties each group to its first "
    "name again (or call the model's own tie_weights())."
)
FIX_AFTER_UNDO = FIX.replace("Fix:", "Fix, after undoing the parametrization:")
CAUSE_META = (
    "materialising the model from the meta device gave each name its own tensor "
    "(to_empty(), or load_state_dict(..., assign=True))"
)
CAUSE_PARAMETRIZATION = (
    "torch.nn.utils.weight_norm / a parametrization replaced the parameter; "
    "undo it first (torch.nn.utils.parametrize.remove_parametrizations or "
    "torch.nn.utils.remove_weight_norm), or apply it before tying and tie its "
    "parameters instead"
)
CAUSE_COPY = (
    "a copy replaced one side: load_state_dict(..., assign=True), copy.deepcopy "
    "of a submodule, or assigning a new nn.Parameter"
)
CAUSE_NEW = "a new parameter was created for one side"
CAUSE_EVERY_NAME_NEW = (
    "every name now holds a new Parameter, so the model was converted or reloaded "
    "name by name: Module.to() / .half() / .double() under "
    "torch.__future__.set_overwrite_module_params_on_conversion(True), a move to a "
    "device whose tensors cannot take the old data in place (meta, XLA), or "
    "load_state_dict(..., assign=True); tie after the move, or set "
    "torch.__future__.set_swap_module_params_on_conversion(True), which keeps the "
    "Parameter objects"
)
CAUSE_META_REPLACED = (
    "one side was replaced by another Parameter (its values cannot be compared "
    "on the meta device)"
)
CAUSE_GONE = "a submodule or parameter was replaced or deleted"


class TieGuard:
    """Record a model's ties now; check later that they still hold.

    Ties (one :class:`~torch.nn.Parameter` under several names) break silently: the
    model still runs, but the two sides train apart. Common causes are
    ``model.to_empty()`` after building on the meta device,
    ``load_state_dict(sd, assign=True)``, :func:`torch.nn.utils.weight_norm` or
    another parametrization, assigning a ``copy.deepcopy`` of a submodule, and a
    conversion that makes a new Parameter per name (``Module.to()`` under
    ``torch.__future__.set_overwrite_module_params_on_conversion(True)``, or a move
    to the meta device or XLA).
    A guard remembers :func:`shared_groups` (and each group's device and object) at
    construction; :meth:`check` raises :class:`BrokenTieError` explaining
    what broke and the likely cause.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model whose current ties are recorded.

    Attributes
    ----------
    groups : list of list of str
        The recorded groups (a copy; pass it to :func:`retie`).

    Examples
    --------
    Use it as a context manager, which checks when the block ends:

    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> with torch.device("meta"):
    ...     model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                            "head": nn.Linear(4, 10, bias=False)})
    ...     _ = ws.tie(model, "head.weight", "emb.weight")
    >>> with ws.TieGuard(model) as guard:
    ...     _ = model.to_empty(device="cpu")
    Traceback (most recent call last):
    ...
    weightshare.BrokenTieError: 1 of 1 recorded tie group(s) broken:
    - ['emb.weight', 'head.weight']: 'head.weight' is now a different Parameter \
object than 'emb.weight'. Likely cause: materialising the model from the meta device \
gave each name its own tensor (to_empty(), or load_state_dict(..., assign=True)).
    Fix: weightshare.retie(model, guard.groups) ties each group to its first name \
again (or call the model's own tie_weights()).
    >>> ws.retie(model, guard.groups)
    >>> guard.check()  # or guard()
    >>> guard.broken()
    []
    """

    __module__ = "weightshare"

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._groups = shared_groups(model)
        params = dict(named(model))
        self._devices = [params[group[0]].device for group in self._groups]
        # The recorded objects, weakly: a group none of whose names holds its object
        # any more was replaced on every side (a conversion), not on one.
        self._objects = [weakref.ref(params[group[0]]) for group in self._groups]

    @property
    def groups(self) -> list[list[str]]:
        """The recorded groups of tied names (a fresh copy each time)."""
        return [list(group) for group in self._groups]

    def __repr__(self) -> str:
        return f"TieGuard(groups={self._groups!r})"

    def broken(self) -> list[list[str]]:
        """The recorded groups that are no longer one Parameter object.

        Returns
        -------
        list of list of str
            The broken groups, in recorded order; empty if all ties hold.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> import weightshare as ws
        >>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
        >>> _ = ws.tie(model, "b.weight", "a.weight")
        >>> guard = ws.TieGuard(model)
        >>> guard.broken()
        []
        >>> model.b.weight = nn.Parameter(model.a.weight.detach().clone())
        >>> guard.broken()
        [['a.weight', 'b.weight']]
        """
        return [list(group) for group in self._groups if not self._intact(group)]

    def check(self) -> None:
        """Raise :class:`BrokenTieError` if any recorded group is broken.

        Raises
        ------
        weightshare.BrokenTieError
            Naming each broken group, what each name is now, the likely cause
            and the fix; ``err.broken`` lists the broken groups.

        Examples
        --------
        >>> import copy
        >>> from torch import nn
        >>> import weightshare as ws
        >>> model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
        >>> _ = ws.tie(model, "b.weight", "a.weight")
        >>> guard = ws.TieGuard(model)
        >>> guard.check()  # silent while the ties hold
        >>> model.b = copy.deepcopy(model.b)
        >>> guard.check()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        weightshare.BrokenTieError: 1 of 1 recorded tie group(s) broken:
        - ['a.weight', 'b.weight']: 'b.weight' is now a different Parameter object \
than 'a.weight'. Likely cause: a copy replaced one side: ...
        """
        broken = [
            (group, device, recorded)
            for group, device, recorded in zip(
                self._groups, self._devices, self._objects, strict=True
            )
            if not self._intact(group)
        ]
        if broken:
            raise BrokenTieError(self._message(broken), [g for g, _, _ in broken])

    def _message(self, broken: list[tuple[list[str], torch.device, Recorded]]) -> str:
        lines = [f"{len(broken)} of {len(self._groups)} recorded tie group(s) broken:"]
        lines += [self._explain(*entry) for entry in broken]
        undo = any(CAUSE_PARAMETRIZATION in line for line in lines)
        return "\n".join([*lines, FIX_AFTER_UNDO if undo else FIX])

    def __call__(self) -> None:
        """Same as :meth:`check`."""
        self.check()

    def __enter__(self) -> TieGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.check()

    def _intact(self, group: list[str]) -> bool:
        found = [lookup(self._model, name) for name in group]
        return all(isinstance(p, nn.Parameter) and p is found[0] for p in found)

    def _explain(
        self, group: list[str], device: torch.device, recorded: Recorded
    ) -> str:
        found = [(name, lookup(self._model, name)) for name in group]
        params = [(n, p) for n, p in found if isinstance(p, nn.Parameter)]
        facts = [_gone(name, miss) for name, miss in found if isinstance(miss, Miss)]
        if params:
            ref_name, ref = params[0]
            facts += [
                f"{name!r} is now a different Parameter object than {ref_name!r}"
                for name, p in params[1:]
                if p is not ref
            ]
        cause = self._cause(group, [p for _, p in params], device, recorded())
        return f"- {group}: {'; '.join(facts)}. Likely cause: {cause}."

    def _cause(
        self,
        group: list[str],
        params: list[nn.Parameter],
        device: torch.device,
        recorded: nn.Parameter | None,
    ) -> str:
        gone = [
            name
            for name in group
            if not isinstance(lookup(self._model, name), nn.Parameter)
        ]
        if any(_parametrized_owner(self._model, name) for name in gone):
            return CAUSE_PARAMETRIZATION
        if device.type == "meta" and params and params[0].device.type != "meta":
            return CAUSE_META
        distinct = list({id(p): p for p in params}.values())
        if len(distinct) < 2:
            return CAUSE_GONE
        if len(params) == len(group) and all(p is not recorded for p in params):
            return CAUSE_EVERY_NAME_NEW
        if any(p.device.type == "meta" for p in distinct):
            return CAUSE_META_REPLACED
        if all(_same_values(distinct[0], p) for p in distinct[1:]):
            return CAUSE_COPY
        return CAUSE_NEW


def _gone(name: str, miss: Miss) -> str:
    if miss.reason:
        return f"{name!r} no longer exists as a parameter (it is now {miss.reason})"
    return f"{name!r} no longer exists"


def _parametrized_owner(model: nn.Module, name: str) -> bool:
    """Whether the module that held ``name`` now has a parametrization of it."""
    found = owner(model, name)
    if found is None:
        return False
    module, attr = found
    old_style = {f"{attr}_g", f"{attr}_v", "original0"} & module._parameters.keys()
    return parametrize.is_parametrized(module) or bool(old_style)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
        return False
    return torch.equal(a, b)
