"""TieGuard: detect and explain broken ties; retie repairs them."""

from __future__ import annotations

import contextlib
import copy
import pickle
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import weightshare as ws


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.wte(x))


GROUP = ["wte.weight", "lm_head.weight"]
DIFFERENT = "'lm_head.weight' is now a different Parameter object than 'wte.weight'"
FIX = "weightshare.retie(model, guard.groups)"
EVERY_NAME_NEW = "every name now holds a new Parameter"


@contextlib.contextmanager
def overwrite_on_conversion() -> Iterator[None]:
    future = torch.__future__
    saved = future.get_overwrite_module_params_on_conversion()
    future.set_overwrite_module_params_on_conversion(True)
    try:
        yield
    finally:
        future.set_overwrite_module_params_on_conversion(saved)


def broken_message(guard: ws.TieGuard) -> str:
    with pytest.raises(ws.BrokenTieError) as info:
        guard.check()
    assert info.value.broken == [GROUP]
    assert guard.broken() == [GROUP]
    return str(info.value)


def test_intact_model_passes() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    guard.check()
    guard()
    assert guard.broken() == []
    assert guard.groups == [GROUP]


def test_groups_is_a_copy() -> None:
    guard = ws.TieGuard(TinyLM())
    guard.groups[0].append("x")
    assert guard.groups == [GROUP]
    assert repr(guard) == f"TieGuard(groups={[GROUP]!r})"


def test_to_empty_after_meta() -> None:
    with torch.device("meta"):
        model = TinyLM()
    guard = ws.TieGuard(model)
    model.to_empty(device="cpu")
    message = broken_message(guard)
    assert message.startswith("1 of 1 recorded tie group(s) broken:\n")
    assert f"- {GROUP!r}: {DIFFERENT}" in message
    assert "from the meta device gave each name its own tensor" in message
    assert "assign=True" in message
    assert message.endswith("(or call the model's own tie_weights()).")
    assert FIX in message
    ws.retie(model, guard.groups)
    guard.check()
    assert not model.wte.weight.is_meta


def test_load_state_dict_assign() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    message = broken_message(guard)
    assert DIFFERENT in message
    # Both names get a new Parameter from the state dict: not "one side".
    assert EVERY_NAME_NEW in message
    assert "load_state_dict(..., assign=True)" in message
    assert "replaced one side" not in message
    ws.retie(model, guard.groups)
    guard.check()


def test_deepcopy_of_submodule_assigned_back() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head = copy.deepcopy(model.lm_head)
    message = broken_message(guard)
    assert DIFFERENT in message
    assert "copy.deepcopy of a submodule" in message
    ws.retie(model, guard.groups)
    guard.check()


def test_new_parameter_with_different_values() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head.weight = nn.Parameter(torch.zeros(10, 4))
    message = broken_message(guard)
    assert "a new parameter was created for one side" in message
    ws.retie(model, guard.groups)
    assert model.lm_head.weight.abs().sum() > 0  # the first name's values survive


def test_parametrizations_weight_norm() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    torch.nn.utils.parametrizations.weight_norm(model.lm_head)
    message = broken_message(guard)
    assert "'lm_head.weight' no longer exists as a parameter" in message
    assert "computed by a parametrization of Linear 'lm_head'" in message
    assert "'lm_head.parametrizations.weight.original0'" in message
    assert "torch.nn.utils.weight_norm / a parametrization replaced" in message
    assert "Fix, after undoing the parametrization: " in message
    with pytest.raises(ws.NotAParameterError, match=r"computed by a parametrization"):
        ws.retie(model, guard.groups)
    parametrize.remove_parametrizations(model.lm_head, "weight")
    ws.retie(model, guard.groups)
    guard.check()


@pytest.mark.skipif(
    not hasattr(torch.nn.utils, "weight_norm"), reason="old weight_norm removed"
)
def test_old_weight_norm() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in torch 2.1+
        torch.nn.utils.weight_norm(model.lm_head)
    message = broken_message(guard)
    assert "now a plain tensor attribute of Linear 'lm_head'" in message
    assert "torch.nn.utils.weight_norm / a parametrization replaced" in message
    torch.nn.utils.remove_weight_norm(model.lm_head)
    ws.retie(model, guard.groups)
    guard.check()


def test_name_gone_without_parametrization() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head = nn.Identity()
    message = broken_message(guard)
    assert "'lm_head.weight' no longer exists." in message
    assert "a submodule or parameter was replaced or deleted" in message
    del model.lm_head
    assert "'lm_head.weight' no longer exists." in broken_message(guard)


def test_first_name_gone_compares_the_rest() -> None:
    model = nn.ModuleDict({n: nn.Linear(2, 2) for n in "abc"})
    ws.retie(model, [["a.weight", "b.weight", "c.weight"]])
    guard = ws.TieGuard(model)
    model.a = nn.Identity()
    model.c.weight = nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ws.BrokenTieError) as info:
        guard.check()
    message = str(info.value)
    assert "'a.weight' no longer exists" in message
    assert "'c.weight' is now a different Parameter object than 'b.weight'" in message


def test_replaced_on_meta_cannot_compare_values() -> None:
    with torch.device("meta"):
        model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head.weight = nn.Parameter(torch.empty(10, 4, device="meta"))
    assert "cannot be compared on the meta device" in broken_message(guard)


def test_dtype_change_counts_as_new_values() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().double())
    assert "a new parameter was created" in broken_message(guard)


def test_several_groups_only_broken_listed() -> None:
    model = nn.ModuleDict({n: nn.Linear(2, 2) for n in "abcd"})
    ws.retie(model, [["a.weight", "b.weight"], ["c.weight", "d.weight"]])
    guard = ws.TieGuard(model)
    model.d = copy.deepcopy(model.d)
    with pytest.raises(ws.BrokenTieError) as info:
        guard()
    assert info.value.broken == [["c.weight", "d.weight"]]
    assert str(info.value).startswith("1 of 2 recorded tie group(s) broken:")
    assert "a.weight" not in str(info.value)


def test_context_manager() -> None:
    model = TinyLM()
    with ws.TieGuard(model) as guard:
        model(torch.tensor([1]))
    assert guard.groups == [GROUP]
    with pytest.raises(ws.BrokenTieError), ws.TieGuard(model):
        model.lm_head = copy.deepcopy(model.lm_head)


def test_context_manager_lets_block_errors_propagate() -> None:
    model = TinyLM()
    with pytest.raises(KeyError), ws.TieGuard(model):
        model.lm_head = copy.deepcopy(model.lm_head)
        raise KeyError("from the block")


def test_guard_of_untied_model() -> None:
    guard = ws.TieGuard(nn.Linear(2, 2))
    assert guard.groups == []
    guard.check()


def test_broken_tie_error_pickles() -> None:
    err = ws.BrokenTieError("msg", [("a", "b")])
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.broken) == ("msg", [["a", "b"]])
    assert isinstance(again, RuntimeError)


def test_every_name_gone() -> None:
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.wte = torch.nn.Identity()
    model.lm_head = torch.nn.Identity()
    message = broken_message(guard)
    assert (
        "'wte.weight' no longer exists; 'lm_head.weight' no longer exists." in message
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conversion_under_overwrite_flag_replaces_every_side(
    dtype: torch.dtype,
) -> None:
    # Module._apply stores nn.Parameter(converted) under each name: two new objects
    # with equal values (even for a no-op float32 -> float32), neither one a copy
    # of "one side".
    model = TinyLM()
    guard = ws.TieGuard(model)
    with overwrite_on_conversion():
        model.to(dtype)
    message = broken_message(guard)
    assert DIFFERENT in message
    assert EVERY_NAME_NEW in message
    assert "set_overwrite_module_params_on_conversion(True)" in message
    assert "replaced one side" not in message
    ws.retie(model, guard.groups)
    guard.check()


def test_move_to_meta_replaces_every_side() -> None:
    # CPU -> meta cannot use param.data = ..., so _apply makes one Parameter per
    # name with no flag set; the values cannot be compared, but the cause is known.
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.to("meta")
    message = broken_message(guard)
    assert EVERY_NAME_NEW in message
    assert "cannot be compared on the meta device" not in message
    ws.retie(model, guard.groups)
    guard.check()


def test_one_side_replaced_is_still_one_side() -> None:
    # The first name keeps its recorded object: a copy of one side, as before.
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())
    message = broken_message(guard)
    assert "a copy replaced one side" in message
    assert EVERY_NAME_NEW not in message
    # ... and when the first name is the one replaced, the second keeps the object.
    model = TinyLM()
    guard = ws.TieGuard(model)
    model.wte.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    message = broken_message(guard)
    assert "a copy replaced one side" in message
    assert EVERY_NAME_NEW not in message
