"""Time ``weightshare.shared_groups`` and ``TieGuard`` (construct + check).

Two models, both built without allocating their weights where that matters:

* GPT-2 small (V=50257, d=768, 12 layers, 12 heads, context 1024; ``wte`` tied to
  ``lm_head``): ``weightshare.models.GPT``, built on the meta device;
* a 200-layer ``nn.Sequential`` of small ``nn.Linear`` layers, every other one tied
  to the layer before it (100 tie groups).

Each operation is timed side by side, round by round, with a plain walk
``for _ in model.named_parameters(remove_duplicate=False): pass``, and reported as
the median over the rounds and as a ratio to the walk's median. The goal is each
operation well under 50 ms; the last line is ``inspect benchmark: ok`` when it is
met (exit status 1 otherwise).

Usage: python benchmarks/inspect_speed.py [--quick] [--rounds N]
(``--quick``: tiny models and few rounds, a smoke test of a few seconds.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import weightshare as ws
from weightshare.models import GPT, GPTConfig

GOAL_MS = 50.0


@dataclass(frozen=True)
class Shape:
    gpt: GPTConfig
    seq_layers: int
    rounds: int


FULL = Shape(gpt=GPTConfig(), seq_layers=200, rounds=51)  # GPT-2 small
QUICK = Shape(
    gpt=GPTConfig(vocab_size=1000, context=64, n_layer=2, n_head=2, d_model=64),
    seq_layers=20,
    rounds=5,
)


def gpt2(shape: Shape) -> nn.Module:
    """The gallery's GPT (wte tied to lm_head), built on the meta device: no memory."""
    with torch.device("meta"):
        return GPT(shape.gpt)


def deep(shape: Shape) -> nn.Module:
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(shape.seq_layers)])
    for i in range(1, shape.seq_layers, 2):
        model[i].weight = model[i - 1].weight
    return model


def walk(model: nn.Module) -> None:
    for _ in model.named_parameters(remove_duplicate=False):
        pass


def guard(model: nn.Module) -> None:
    ws.TieGuard(model).check()


def medians(
    model: nn.Module, ops: dict[str, Callable[[nn.Module], object]], rounds: int
) -> dict[str, float]:
    """Median seconds per op, the ops taking turns within each round."""
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():
        op(model)  # warm up
    for _ in range(rounds):
        for name, op in ops.items():
            start = time.perf_counter()
            op(model)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def run(label: str, model: nn.Module, rounds: int) -> list[float]:
    ops: dict[str, Callable[[nn.Module], object]] = {
        "walk": walk,
        "shared_groups": ws.shared_groups,
        "TieGuard": guard,
    }
    times = medians(model, ops, rounds)
    count = ws.count_parameters(model)
    groups = len(ws.shared_groups(model))
    print(
        f"{label}: {count.unique:,} parameters, {count.names} names, "
        f"{groups} tie group(s), median of {rounds} rounds"
    )
    base = times["walk"]
    print(f"  {'named_parameters walk':<30} {base * 1e3:8.3f} ms")
    for name, label_ in (
        ("shared_groups", "shared_groups"),
        ("TieGuard", "TieGuard construct + check"),
    ):
        ms = times[name] * 1e3
        print(f"  {label_:<30} {ms:8.3f} ms  ({times[name] / base:5.1f}x the walk)")
    return [times["shared_groups"] * 1e3, times["TieGuard"] * 1e3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    rounds = args.rounds or shape.rounds
    versions = f"torch {torch.__version__}, weightshare {ws.__version__}"
    print(f"{versions}; goal: each under {GOAL_MS:g} ms")
    name = "GPT-2 small shaped" if not args.quick else "GPT-2 shaped (quick)"
    worst = max(
        run(f"{name} on meta", gpt2(shape), rounds)
        + run(
            f"{shape.seq_layers}-layer Sequential, every other tied",
            deep(shape),
            rounds,
        )
    )
    if worst < GOAL_MS:
        print("inspect benchmark: ok")
        return 0
    print(f"inspect benchmark: FAILED (slowest {worst:.3f} ms >= {GOAL_MS:g} ms)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
