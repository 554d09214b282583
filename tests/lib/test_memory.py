"""weightshare.training_state_bytes counts each storage once."""

from __future__ import annotations

import torch
from torch import nn

import weightshare as ws


def _pair(tied: bool) -> nn.ModuleDict:
    model = nn.ModuleDict({"emb": nn.Embedding(6, 3), "head": nn.Linear(3, 6)})
    if tied:
        model.head.weight = model.emb.weight
    return model


def test_parameters_only_counts_the_tied_weight_once() -> None:
    untied, tied = _pair(tied=False), _pair(tied=True)
    weight = 6 * 3 * 4  # fp32 bytes of one V×d matrix
    assert ws.training_state_bytes(untied) - ws.training_state_bytes(tied) == weight
    assert ws.training_state_bytes(tied) == (18 + 6) * 4  # one matrix, the bias


def test_gradients_and_sgd_momentum_are_counted_once_per_storage() -> None:
    model = _pair(tied=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.head(model.emb(torch.tensor([0, 5]))).sum().backward()
    optimizer.step()
    params = ws.training_state_bytes(model)  # parameters and their gradients
    assert params == 2 * (18 + 6) * 4
    assert ws.training_state_bytes(model, optimizer) == 3 * (18 + 6) * 4


def test_views_of_one_storage_count_once_and_meta_works() -> None:
    with torch.device("meta"):
        model = _pair(tied=False)
    model.head.weight = nn.Parameter(model.emb.weight.detach().view(3, 6).t())
    assert ws.training_state_bytes(model) == (18 + 6) * 4
