"""weightshare.models.GPT: the tie, the shapes, the counts, the meta device."""

from __future__ import annotations

import pytest
import torch

from weightshare.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=13, context=8, n_layer=2, n_head=2, d_model=8)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # unique Parameters


def test_tied_model_holds_one_embedding_object() -> None:
    model = GPT(TINY)
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(GPTConfig(**{**TINY.__dict__, "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.wte.weight


def test_untied_model_has_exactly_v_times_d_more_parameters() -> None:
    untied = GPTConfig(**{**TINY.__dict__, "tie_embeddings": False})
    extra = _count(GPT(untied)) - _count(GPT(TINY))
    assert extra == TINY.vocab_size * TINY.d_model


def test_gpt2_small_on_meta_device_has_gpt2s_count() -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig())
    assert model.wte.weight.is_meta
    assert model.lm_head.weight is model.wte.weight
    assert _count(model) == 124_439_808  # GPT-2 small, as published by OpenAI


def test_forward_gives_logits_and_checks_the_context() -> None:
    model = GPT(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 5))
    assert model(idx).shape == (2, 5, TINY.vocab_size)
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 6))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % TINY.vocab_size
    before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])  # earlier positions
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_init_gives_the_tied_weight_one_draw_with_gpt2_scale() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4000, context=8, n_layer=2, n_head=2, d_model=64))
    std = model.wte.weight.std().item()
    assert 0.019 < std < 0.021
    assert torch.all(model.ln_f.weight == 1) and torch.all(
        model.blocks[0].ln_1.bias == 0
    )


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="d_model=10 must be divisible by n_head=3"):
        GPT(GPTConfig(vocab_size=5, context=4, n_layer=1, n_head=3, d_model=10))


def test_residual_projections_get_gpt2s_depth_scaled_init() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, context=8, n_layer=2, n_head=2, d_model=64)
    block = GPT(config).blocks[0]
    residual = 0.02 / (2 * config.n_layer) ** 0.5
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
