"""weightshare.fsdp_units: the modules to shard with FSDP2, each tie in one unit.

These tests read only the models' structure (no process group); the units are
sharded for real, in two processes, in tests/lib/test_distributed.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from torch import nn

import weightshare as ws
from weightshare.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=16, context=4, n_layer=2, n_head=2, d_model=8)


def same(units: list[nn.Module | list[nn.Module]], expected: list[object]) -> bool:
    """Whether ``units`` is ``expected``, comparing modules by identity."""
    if len(units) != len(expected):
        return False
    for unit, want in zip(units, expected, strict=True):
        if isinstance(want, list):
            if not isinstance(unit, list) or len(unit) != len(want):
                return False
            if any(a is not b for a, b in zip(unit, want, strict=True)):
                return False
        elif unit is not want:
            return False
    return True


@pytest.fixture(scope="module")
def transformers() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield pytest.importorskip("transformers")


def test_gpt_pair_is_merged_blocks_stay_alone() -> None:
    model = GPT(TINY)
    units = ws.fsdp_units(model, [model.wte, *model.blocks, model.lm_head])
    assert same(units, [[model.wte, model.lm_head], model.blocks[0], model.blocks[1]])


def test_order_follows_the_first_module_of_each_unit() -> None:
    model = GPT(TINY)
    units = ws.fsdp_units(model, [*model.blocks, model.lm_head, model.wte])
    assert same(units, [model.blocks[0], model.blocks[1], [model.lm_head, model.wte]])


def test_a_tied_module_left_out_joins_the_unit() -> None:
    model = GPT(TINY)
    units = ws.fsdp_units(model, [model.wte, *model.blocks])
    assert same(units, [[model.wte, model.lm_head], model.blocks[0], model.blocks[1]])


def test_no_ties_returns_the_modules_unchanged() -> None:
    model = GPT(GPTConfig(**{**vars(TINY), "tie_embeddings": False}))
    assert ws.shared_groups(model) == []
    modules = [model.wte, *model.blocks, model.lm_head]
    assert same(ws.fsdp_units(model, modules), modules)
    assert ws.fsdp_units(model, []) == []


def test_works_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = GPT(TINY)
    units = ws.fsdp_units(model, [model.wte, *model.blocks, model.lm_head])
    assert same(units, [[model.wte, model.lm_head], model.blocks[0], model.blocks[1]])


def test_hugging_face_gpt2(transformers: ModuleType) -> None:
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=8, vocab_size=50, n_positions=16,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    body = model.transformer
    units = ws.fsdp_units(model, [body.wte, *body.h, model.lm_head])
    assert same(units, [[body.wte, model.lm_head], body.h[0], body.h[1]])


def t5(transformers: ModuleType) -> nn.Module:
    config = transformers.T5Config(
        vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
        decoder_start_token_id=0,
    )  # fmt: skip
    model: nn.Module = transformers.T5ForConditionalGeneration(config)
    return model


def test_hugging_face_t5_ties_four_names(transformers: ModuleType) -> None:
    model = t5(transformers)
    # transformers 5 ties the shared embedding, both stacks' embed_tokens and lm_head.
    assert ws.shared_groups(model) == [
        [
            "shared.weight",
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
            "lm_head.weight",
        ]
    ]
    enc, dec = model.encoder, model.decoder
    units = ws.fsdp_units(model, [model.shared, *enc.block, *dec.block, model.lm_head])
    tied = [model.shared, model.lm_head, enc.embed_tokens, dec.embed_tokens]
    assert same(units, [tied, enc.block[0], dec.block[0]])


class RootHolds(nn.Module):
    """The root registers a parameter that a submodule also holds."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.body = nn.Linear(3, 3)
        self.table = self.emb.weight


def test_a_tie_the_root_holds_is_left_to_the_root() -> None:
    model = RootHolds()
    assert ws.shared_groups(model) == [["table", "emb.weight"]]
    assert same(ws.fsdp_units(model, [model.emb, model.body]), [model.body])


class Nested(nn.Module):
    """``outer`` holds ``inner``; ``outer.proj`` is tied to ``other``."""

    def __init__(self) -> None:
        super().__init__()
        self.outer = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        self.other = nn.Linear(3, 3)

    @property
    def inner(self) -> nn.Module:
        return self.outer[0]


def test_a_unit_comes_after_the_units_inside_it() -> None:
    model = Nested()
    units = ws.fsdp_units(model, [model.outer, model.inner, model.other])
    assert same(units, [model.inner, model.outer, model.other])


def test_a_tie_between_outer_and_inner_modules_keeps_the_outer() -> None:
    model = Nested()
    model.outer[1].weight = model.inner.weight  # tie inside `outer`
    model.other.weight = model.inner.weight  # and to `other`
    units = ws.fsdp_units(model, [model.inner, model.outer, model.other])
    assert same(units, [[model.outer, model.other]])


def test_a_module_reused_at_two_places_is_one_unit() -> None:
    encoder = nn.Linear(3, 3)
    model = nn.ModuleDict({"left": encoder, "right": encoder, "head": nn.Linear(3, 1)})
    assert same(ws.fsdp_units(model, [encoder, model.head]), [encoder, model.head])


def test_error_for_a_module_not_in_the_model() -> None:
    model = GPT(TINY)
    stranger = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"modules\[1\] \(Linear\) is not a submodule"):
        ws.fsdp_units(model, [model.wte, stranger])


def test_error_for_the_model_itself() -> None:
    model = GPT(TINY)
    with pytest.raises(ValueError, match=r"modules\[0\] is the model itself"):
        ws.fsdp_units(model, [model, model.wte])


def test_error_for_a_module_listed_twice() -> None:
    model = GPT(TINY)
    with pytest.raises(ValueError, match=r"modules\[0\] and modules\[2\] are the same"):
        ws.fsdp_units(model, [model.wte, model.lm_head, model.wte])


def test_error_for_something_that_is_not_a_module() -> None:
    model = GPT(TINY)
    with pytest.raises(TypeError, match=r"modules\[0\] is a Parameter, not an nn"):
        ws.fsdp_units(model, [model.wte.weight])  # type: ignore[list-item]


def test_one_module_tied_to_two_listed_modules_merges_all_three() -> None:
    head = nn.Module()
    model = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3), "head": head})
    head.p = model.a.weight  # head ties to a and to b, and is not listed
    head.q = model.b.weight
    assert same(ws.fsdp_units(model, [model.a, model.b]), [[model.a, model.b, head]])


class Crossed(nn.Module):
    """Two ties that cross nested modules: ``a`` holds ``b``, ``d`` holds ``e``.

    ``a.p`` is ``e.weight`` and ``b.weight`` is ``d.q``. Whichever of the two tie
    groups is sharded first takes a module of the other (fully_shard manages every
    module below the ones it is given), so no order of two units works.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a, self.d = nn.Module(), nn.Module()
        self.a.b, self.d.e = nn.Linear(3, 3), nn.Linear(3, 3)
        self.a.p = self.d.e.weight
        self.d.q = self.a.b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a.b(x) @ self.a.p
        return self.d.e(x) @ self.d.q


@pytest.mark.parametrize("inner", [True, False])
def test_ties_that_cross_nested_modules_become_one_unit(inner: bool) -> None:
    model = Crossed()
    assert ws.shared_groups(model) == [["a.p", "d.e.weight"], ["a.b.weight", "d.q"]]
    a, b, d, e = model.a, model.a.b, model.d, model.d.e
    modules = [b, a, e, d] if inner else [a, d]
    assert same(ws.fsdp_units(model, modules), [[a, d]])


class Between(nn.Module):
    """``outer.p`` is tied to ``outer.middle.inner.weight``; ``middle`` is between."""

    def __init__(self) -> None:
        super().__init__()
        self.outer = nn.Module()
        self.outer.middle = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        self.outer.p = self.outer.middle[1].weight
        self.other = nn.Linear(3, 3)


def test_a_module_between_two_tied_modules_joins_their_unit() -> None:
    model = Between()
    outer, middle, inner = model.outer, model.outer.middle, model.outer.middle[1]
    units = ws.fsdp_units(model, [inner, middle, outer, model.other])
    assert same(units, [outer, model.other])


def test_a_module_holding_a_tie_left_to_the_root_is_left_to_the_root() -> None:
    model = RootHolds()
    wrapper = nn.Sequential(model.emb)  # holds emb, whose weight the root holds
    model.wrapper = wrapper
    del model.emb
    assert ws.shared_groups(model) == [["table", "wrapper.0.weight"]]
    emb = wrapper[0]
    assert same(ws.fsdp_units(model, [emb, wrapper, model.body]), [model.body])
