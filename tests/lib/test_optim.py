"""param_groups and unique_parameters: a shared parameter is optimized once."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import weightshare as ws


class TinyLM(nn.Module):
    """Embedding tied to the output projection, with a norm and a biased layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def by_type(name: str, module: nn.Module, param: nn.Parameter) -> bool:
    """minGPT's rule: biases, embeddings and norms do not decay."""
    return name.endswith("bias") or isinstance(module, (nn.Embedding, nn.LayerNorm))


def ids(params: list[torch.Tensor]) -> list[int]:
    return [id(p) for p in params]


# --- param_groups ---------------------------------------------------------------------


def test_default_rule_splits_by_dimension() -> None:
    model = TinyLM()
    decay, exempt = ws.param_groups(model, weight_decay=0.1)
    assert ids(decay["params"]) == ids([model.emb.weight, model.proj.weight])
    assert ids(exempt["params"]) == ids(
        [model.proj.bias, model.norm.weight, model.norm.bias]
    )
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0


def test_every_trainable_parameter_exactly_once() -> None:
    model = TinyLM()
    groups = ws.param_groups(model, 0.1, by_type, tied="decay")
    listed = [p for group in groups for p in group["params"]]
    assert sorted(ids(listed)) == sorted(ids(list(model.parameters())))


def test_groups_build_an_optimizer_without_error_or_warning() -> None:
    model = TinyLM()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = torch.optim.AdamW(
            ws.param_groups(model, 0.1, by_type, tied="decay")
        )
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_the_naive_split_by_type_raises_in_the_optimizer() -> None:
    """What param_groups replaces: two lists that both hold the tied weight."""
    model = TinyLM()
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    exempt = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    with pytest.raises(ValueError, match="more than one parameter group"):
        torch.optim.AdamW([{"params": decay}, {"params": exempt}])


def test_disagreement_raises_naming_both_names_and_modules() -> None:
    with pytest.raises(ValueError) as info:
        ws.param_groups(TinyLM(), 0.1, by_type)
    message = str(info.value)
    assert "'emb.weight' (Embedding) no decay" in message
    assert "'head.weight' (Linear) decay" in message
    assert "tied='decay' or tied='no_decay'" in message


@pytest.mark.parametrize(("tied", "decayed"), [("decay", True), ("no_decay", False)])
def test_tied_policy_settles_a_disagreement(tied: str, decayed: bool) -> None:
    model = TinyLM()
    decay, exempt = ws.param_groups(model, 0.1, by_type, tied=tied)  # type: ignore[arg-type]
    assert any(p is model.emb.weight for p in decay["params"]) is decayed
    assert any(p is model.emb.weight for p in exempt["params"]) is not decayed
    assert any(p is model.proj.weight for p in decay["params"])


def test_a_rule_keyed_on_the_second_name_is_not_ignored() -> None:
    """named_parameters() lists only emb.weight; a rule about head still counts."""
    model = TinyLM()

    def head_decays(name: str, module: nn.Module, param: nn.Parameter) -> bool:
        return not name.startswith("head")

    assert "head.weight" not in dict(model.named_parameters())
    with pytest.raises(ValueError, match=r"'head.weight' \(Linear\) decay"):
        ws.param_groups(model, 0.1, head_decays)


def test_agreeing_names_need_no_policy() -> None:
    shared = nn.Linear(3, 3)
    model = nn.ModuleDict({"a": shared, "b": shared})
    decay, exempt = ws.param_groups(model, 0.1)
    assert ids(decay["params"]) == ids([shared.weight])
    assert ids(exempt["params"]) == ids([shared.bias])


def test_frozen_parameters_are_left_out() -> None:
    model = TinyLM()
    model.norm.requires_grad_(False)
    _, exempt = ws.param_groups(model, 0.1)
    assert ids(exempt["params"]) == ids([model.proj.bias])


def test_empty_group_is_kept_and_accepted() -> None:
    model = nn.Linear(3, 3, bias=False)
    groups = ws.param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 0]
    torch.optim.SGD(groups, lr=0.1)


def test_rule_sees_the_module_that_holds_each_name() -> None:
    model = TinyLM()
    seen: list[tuple[str, str]] = []

    def record(name: str, module: nn.Module, param: nn.Parameter) -> bool:
        seen.append((name, type(module).__name__))
        return False

    ws.param_groups(model, 0.1, record)
    assert ("emb.weight", "Embedding") in seen and ("head.weight", "Linear") in seen
    assert len(seen) == len(list(model.named_parameters(remove_duplicate=False)))


def test_invalid_policy_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"tied must be .* got 'both'"):
        ws.param_groups(TinyLM(), 0.1, tied="both")  # type: ignore[arg-type]


# --- unique_parameters ----------------------------------------------------------------


def test_unique_parameters_keeps_first_seen_order() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    assert ids(ws.unique_parameters([b, a, b, a, b])) == ids([b, a])


def test_unique_parameters_keeps_equal_values_and_views() -> None:
    a = nn.Parameter(torch.zeros(4))
    equal = nn.Parameter(torch.zeros(4))
    view = a.view(2, 2)
    assert len(ws.unique_parameters([a, equal, view])) == 3


def test_unique_parameters_consumes_a_generator() -> None:
    model = TinyLM()
    both = (p for m in (model.emb, model.head) for p in m.parameters())
    assert ids(ws.unique_parameters(both)) == ids([model.emb.weight])


def grads_of_tens() -> nn.Parameter:
    weight = nn.Parameter(torch.zeros(4))
    weight.grad = torch.full((4,), 10.0)
    return weight


def test_clip_over_a_repeated_parameter_overcounts_and_overscales() -> None:
    """The failure unique_parameters prevents, on the real clip_grad_norm_."""
    weight = grads_of_tens()
    norm = nn.utils.clip_grad_norm_([weight, weight], max_norm=1.0)
    assert norm.item() == pytest.approx(20.0 * 2**0.5)
    assert weight.grad is not None
    assert weight.grad[0].item() == pytest.approx(0.0125)


def test_clip_over_unique_parameters_is_right() -> None:
    weight = grads_of_tens()
    norm = nn.utils.clip_grad_norm_(ws.unique_parameters([weight, weight]), 1.0)
    assert norm.item() == pytest.approx(20.0)
    assert weight.grad is not None
    assert weight.grad[0].item() == pytest.approx(0.5)
