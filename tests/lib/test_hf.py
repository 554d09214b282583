"""Hugging Face transformers models with tied embeddings, built locally.

Nothing is downloaded: the models are built from tiny configs, with
HF_HUB_OFFLINE=1 set while transformers is imported and used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.testing import assert_close

import weightshare as ws


@pytest.fixture(scope="module")
def transformers() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield pytest.importorskip("transformers")


def gpt2(transformers: ModuleType, device: str = "cpu") -> torch.nn.Module:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=8,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.device(device):
        return transformers.GPT2LMHeadModel(config)


GPT2_GROUP = ["transformer.wte.weight", "lm_head.weight"]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_gpt2_groups_and_counts(transformers: ModuleType, device: str) -> None:
    model = gpt2(transformers, device)
    assert ws.shared_groups(model) == [GPT2_GROUP]
    assert ws.storage_aliases(model) == []
    count = ws.count_parameters(model)
    assert count.unique == sum(p.numel() for p in model.parameters())
    assert count.saved_by_sharing == 50 * 8
    assert count.names == count.unique_tensors + 1


def test_gpt2_guard_to_empty_and_tie_weights(transformers: ModuleType) -> None:
    model = gpt2(transformers, "meta")
    guard = ws.TieGuard(model)
    model.to_empty(device="cpu")
    with pytest.raises(
        ws.BrokenTieError, match="from the meta device gave each name its own tensor"
    ):
        guard.check()
    model.tie_weights()  # the model's own fix works too
    guard.check()


def test_gpt2_grad_contributions(transformers: ModuleType) -> None:
    torch.manual_seed(0)
    model = gpt2(transformers).eval()  # no dropout: loss_fn must be repeatable
    ids = torch.randint(0, 50, (1, 6))

    def loss_fn() -> torch.Tensor:
        return model(ids, labels=ids).loss

    parts = ws.grad_contributions(model, "lm_head.weight", loss_fn)
    assert list(parts) == ["transformer.wte", "lm_head"]
    model.zero_grad()
    loss_fn().backward()
    assert_close(parts["transformer.wte"] + parts["lm_head"], model.lm_head.weight.grad)


def test_gpt2_checkpoint_round_trip(transformers: ModuleType, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = gpt2(transformers)
    torch.manual_seed(1)
    target = gpt2(transformers)
    ws.save(source, tmp_path / "gpt2.safetensors")
    assert ws.checkpoint_groups(tmp_path / "gpt2.safetensors") == [GPT2_GROUP]
    ws.load(target, tmp_path / "gpt2.safetensors")
    assert torch.equal(target.lm_head.weight, source.lm_head.weight)
    assert ws.shared_groups(target) == [GPT2_GROUP]


def test_t5_four_way_tie(transformers: ModuleType) -> None:
    config = transformers.T5Config(
        vocab_size=50,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(config)
    assert ws.shared_groups(model) == [
        [
            "shared.weight",
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
            "lm_head.weight",
        ]
    ]
    assert ws.count_parameters(model).saved_by_sharing == 3 * 50 * 8


def test_bart_four_way_tie(transformers: ModuleType) -> None:
    config = transformers.BartConfig(
        vocab_size=50,
        d_model=8,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=16,
    )
    model = transformers.BartForConditionalGeneration(config)
    assert ws.shared_groups(model) == [
        [
            "model.shared.weight",
            "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight",
            "lm_head.weight",
        ]
    ]
    assert ws.count_parameters(model).saved_by_sharing == 3 * 50 * 8
