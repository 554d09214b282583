"""The three-way tie of the tied-Transformer page, checked on a tiny model.

The model is defined here, in the shape the gallery page uses (tests do not import
example scripts): encoder embedding, decoder embedding and pre-softmax projection are
one Parameter, around a one-layer ``nn.Transformer``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import weightshare as ws

V, D, HEADS, FF = 7, 8, 2, 16
NAMES = ["encoder_embedding.weight", "decoder_embedding.weight", "generator.weight"]


class TinySeq2Seq(nn.Module):
    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.encoder_embedding = nn.Embedding(V, D)
        self.decoder_embedding = nn.Embedding(V, D)
        self.generator = nn.Linear(D, V, bias=False)
        if tie:
            shared = self.generator.weight
            self.encoder_embedding.weight = self.decoder_embedding.weight = shared
        self.transformer = nn.Transformer(D, HEADS, 1, 1, FF, 0.0, batch_first=True)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        scale = math.sqrt(D)
        hidden = self.transformer(
            self.encoder_embedding(src) * scale,
            self.decoder_embedding(tgt_in) * scale,
            tgt_mask=mask,
        )
        out: torch.Tensor = self.generator(hidden)
        return out


def reversal_loss(model: nn.Module, src: torch.Tensor) -> torch.Tensor:
    target = src.flip(1)
    tgt_in = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1)
    scores = model(src, tgt_in)
    return F.cross_entropy(scores.flatten(0, 1), target.flatten())


@pytest.fixture
def src() -> torch.Tensor:
    return torch.tensor([[1, 2, 3, 2], [3, 1, 1, 2]])  # tokens 4..6 never appear


def test_three_names_are_one_parameter_before_and_after_steps(
    src: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    model = TinySeq2Seq()
    shared = model.generator.weight
    address = shared.data_ptr()
    assert model.encoder_embedding.weight is shared
    assert model.decoder_embedding.weight is shared
    assert ws.shared_groups(model) == [NAMES]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = shared.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        reversal_loss(model, src).backward()
        optimizer.step()
    assert not torch.equal(shared, before)  # it trained
    for name in NAMES:
        assert model.get_parameter(name) is shared
        assert model.get_parameter(name).data_ptr() == address
    assert ws.shared_groups(model) == [NAMES]
    assert sum(p is shared for p in optimizer.state) == 1
    assert len(optimizer.state) == len(list(model.parameters()))


def test_untied_model_has_two_more_vocabulary_matrices() -> None:
    tied, untied = TinySeq2Seq(), TinySeq2Seq(tie=False)
    count_tied, count_untied = ws.count_parameters(tied), ws.count_parameters(untied)
    assert count_untied.unique - count_tied.unique == 2 * V * D
    assert ws.shared_groups(untied) == []
    # The closed formula: nn.Transformer with one encoder and one decoder layer.
    attention, norm = 4 * D * D + 4 * D, 2 * D
    feed_forward = 2 * D * FF + FF + D
    layers = (attention + feed_forward + 2 * norm) + (
        2 * attention + feed_forward + 3 * norm
    )
    assert count_tied.unique == V * D + layers + 2 * norm
    # A naive state_dict() count sees three keys, so it reports the untied size.
    assert count_tied.state_dict == count_untied.unique
    assert count_tied.saved_by_sharing == 2 * V * D


def test_gradient_is_the_sum_of_the_three_uses(src: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinySeq2Seq()
    shared = model.generator.weight
    parts = ws.grad_contributions(model, shared, lambda: reversal_loss(model, src))
    assert list(parts) == ["encoder_embedding", "decoder_embedding", "generator"]
    assert shared.grad is None  # attribution leaves .grad alone
    reversal_loss(model, src).backward()
    assert shared.grad is not None
    assert_close(sum(parts.values()), shared.grad)

    def rows(grad: torch.Tensor) -> list[int]:
        return grad.norm(dim=1).nonzero().flatten().tolist()

    assert rows(parts["encoder_embedding"]) == [1, 2, 3]
    assert rows(parts["decoder_embedding"]) == [0, 1, 2, 3]  # 0 is BOS
    assert rows(parts["generator"]) == list(range(V))


def test_a_cloned_parameter_is_not_a_tie_and_drifts(src: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinySeq2Seq()
    emb = model.encoder_embedding
    model.generator.weight = nn.Parameter(emb.weight.clone())  # the classic mistake
    assert torch.equal(model.generator.weight, emb.weight)
    assert model.generator.weight is not emb.weight
    assert ws.shared_groups(model) == [NAMES[:2]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reversal_loss(model, src).backward()
    optimizer.step()
    assert not torch.equal(model.generator.weight, emb.weight)
