"""The BatchNorm page's comparative claims hold at seeds the page does not use.

The page (examples/fix_train/plot_batchnorm_shared_buffers.py) claims that a reused
encoder called once per branch moves branch b's embeddings between training and
evaluation mode many times as much as the remedies do, when the two branches come
from different sources. ``run_page`` runs the page's own code with its ``SEED = 0``
line changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_claims_across_seeds import run_page

pytestmark = pytest.mark.slow
PAGE = (
    Path(__file__).resolve().parents[2]
    / "examples"
    / "fix_train"
    / "plot_batchnorm_shared_buffers.py"
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_batchnorm_claims(seed: int) -> None:
    page = run_page(PAGE, seed)
    per_branch, one_call, towers, layer_norm = page["gaps"].values()
    assert per_branch[1] > 0.5
    assert per_branch[1] > 5 * per_branch[0]
    assert page["per_branch"][1] > 5 * page["per_branch"][0]
    assert per_branch[1] > 5 * max(one_call[1], towers[1])
    assert layer_norm == [0.0, 0.0]
    assert page["bn"].num_batches_tracked.item() == 2
