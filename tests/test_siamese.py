"""The Siamese page's key claims, checked on a tiny encoder (no example imported).

A shared encoder's gradient is the sum of its two branches' contributions, two tied
towers train exactly like one shared encoder, and the tie survives training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import weightshare


def _encoder() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


class _Siamese(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encoder(a), self.encoder(b)


class _TwoTowers(nn.Module):
    def __init__(self, tower_a: nn.Module, tower_b: nn.Module) -> None:
        super().__init__()
        self.tower_a, self.tower_b = tower_a, tower_b
        for name, _ in tower_a.named_parameters():
            weightshare.tie(self, f"tower_b.{name}", f"tower_a.{name}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.tower_a(a), self.tower_b(b)


def _loss(za: torch.Tensor, zb: torch.Tensor, dissimilar: torch.Tensor) -> torch.Tensor:
    """Contrastive loss with margin 1 (Hadsell, Chopra and LeCun, 2006)."""
    d = nn.functional.pairwise_distance(za, zb)
    pull = (1 - dissimilar) * d**2
    return (0.5 * (pull + dissimilar * (1 - d).clamp(min=0) ** 2)).mean()


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, 6, 4, generator=gen)
    return a, b, (torch.arange(6) % 2).float()


def test_shared_gradient_is_the_sum_of_the_two_branches() -> None:
    torch.manual_seed(0)
    model = _Siamese(_encoder())
    a, b, y = _batch()
    _loss(*model(a, b), y).backward()
    for param in model.parameters():
        parts = weightshare.grad_contributions(
            model, param, lambda: _loss(*model(a, b), y)
        )
        assert len(parts) == 2 and all(k.endswith(("[0]", "[1]")) for k in parts)
        first, second = parts.values()
        assert torch.allclose(first + second, param.grad, atol=1e-7)
        # Independent of the library: each branch alone, the other one detached.
        za, zb = model(a, b)
        only_a = torch.autograd.grad(_loss(za, zb.detach(), y), param)[0]
        za, zb = model(a, b)
        only_b = torch.autograd.grad(_loss(za.detach(), zb, y), param)[0]
        assert torch.allclose(first, only_a, atol=1e-7)
        assert torch.allclose(second, only_b, atol=1e-7)


def test_tied_towers_train_like_one_shared_encoder_and_stay_tied() -> None:
    torch.manual_seed(0)
    shared = _Siamese(_encoder())
    towers = _TwoTowers(copy.deepcopy(shared.encoder), _encoder())
    groups = weightshare.shared_groups(towers)
    assert len(groups) == 4
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (shared, towers)]
    for step in range(5):
        a, b, y = _batch(step)
        for model, optimizer in zip((shared, towers), optimizers, strict=True):
            optimizer.zero_grad()
            _loss(*model(a, b), y).backward()
            optimizer.step()
    assert weightshare.shared_groups(towers) == groups
    assert towers.tower_a[0].weight is towers.tower_b[0].weight
    pairs = zip(shared.parameters(), towers.parameters(), strict=True)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in pairs)
    assert weightshare.count_parameters(towers).unique == sum(
        p.numel() for p in shared.parameters()
    )
