"""The pages' comparative claims hold at other seeds, not only at the page's own.

A claim such as "the embedding beats raw pixels" or "both models learn the task"
could hold at one seed by luck. Each page below keeps its seed in one line,
``SEED = 0``; this test runs the page's own code with only that line changed (no
model is copied here) and checks, at each other seed, the claims the page makes.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED_LINE = "SEED = 0  #"


def run_page(path: Path, seed: int) -> dict[str, Any]:
    """The namespace of ``path`` after running it with ``SEED = seed``."""
    source = path.read_text()
    assert source.count(SEED_LINE) == 1, f"{path.name} must set its seed once"
    code = compile(source.replace(SEED_LINE, f"SEED = {seed}  #"), str(path), "exec")
    namespace: dict[str, Any] = {"__name__": "__page__", "__file__": str(path)}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
        exec(code, namespace)
    plt.close("all")
    return namespace


RAW_PIXELS_CORRECT = 888  # of 899 held-out digits: 1-NN on raw pixels, any seed


@pytest.fixture(scope="module")
def siamese_runs() -> dict[int, dict[str, Any]]:
    """The Siamese page's results at five seeds it does not use (its own is 0)."""
    runs = {}
    for seed in (1, 2, 3, 4, 5):
        page = run_page(EXAMPLES / "learn" / "plot_3_siamese.py", seed)
        runs[seed] = {
            "correct": round(page["accuracy"] * 899),
            "raw_correct": round(page["raw_accuracy"] * 899),
            "auc": page["auc"],
            "seconds": page["train_seconds"],
        }
    return runs


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_siamese_embedding_beats_raw_pixels_at_every_seed(
    siamese_runs: dict[int, dict[str, Any]], seed: int
) -> None:
    run = siamese_runs[seed]
    assert run["raw_correct"] == RAW_PIXELS_CORRECT
    assert run["correct"] > run["raw_correct"], run
    assert run["auc"] >= 0.999, run


def test_siamese_embedding_beats_raw_pixels_by_4_digits_on_average(
    siamese_runs: dict[int, dict[str, Any]],
) -> None:
    """At least 4 more of 899 digits right than raw pixels, on average over five seeds.

    Issue 21 asks for "0.4 points (4 more digits of 899)"; 0.4 points is 3.6 digits,
    so this checks the stricter reading, 4 digits (0.44 points).
    """
    gains = [run["correct"] - run["raw_correct"] for run in siamese_runs.values()]
    print(
        {
            seed: (run["correct"], round(run["auc"], 5), round(run["seconds"], 1))
            for seed, run in siamese_runs.items()
        }
    )
    assert sum(gains) / len(gains) >= 4, gains


@pytest.mark.parametrize("seed", [1, 2])
def test_transformer_claims(seed: int) -> None:
    page = run_page(EXAMPLES / "learn" / "plot_2_tied_transformer.py", seed)
    assert page["tied_accuracy"] >= 0.99 and page["untied_accuracy"] >= 0.99
    first = page["first_below"]
    assert first["untied"] < first["tied"] < page["STEPS"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resize_claims(seed: int) -> None:
    page = run_page(EXAMPLES / "fix_adapt" / "plot_resize_vocabulary.py", seed)
    assert page["random_rows"].min() > 0.99  # random new rows take the softmax
    assert page["mean_rows"].max() < 4 / 16  # mean rows: at most an average token's
