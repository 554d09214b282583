"""The version table's pinned column is what the reproductions give on the pins.

``benchmarks/versions.py`` records, for each failure of the Fix pages that depends
on a third-party version, whether it happens under several releases; the symptom
index shows the newest file. Here the reproductions run again in the test
environment (the pinned versions), and every answer must equal the file's pinned
column, so the table cannot drift from what the pages show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "versions.py"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import pytest  # noqa: E402
import version_table  # noqa: E402


def _recorded() -> dict[str, object]:
    path = version_table.newest(ROOT / "benchmarks" / "results")
    assert path is not None, "no versions-*.json: run make versions"
    return json.loads(path.read_text())


@pytest.mark.slow  # about 10 s of imports and tiny models; make test runs it
def test_pinned_column_matches_a_live_run() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    child = subprocess.run(
        [sys.executable, str(SCRIPT), "--child"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr
    live = json.loads(child.stdout.strip().splitlines()[-1])
    [pinned] = [e for e in _recorded()["environments"] if e["label"] == "pinned"]
    # torch's local version (+cpu) depends on the index it came from: not compared.
    libraries = ("transformers", "peft", "accelerate", "safetensors")
    for name in libraries:
        assert live["versions"][name] == pinned["versions"][name], (
            f"{name} is pinned at {live['versions'][name]} but the table was made "
            f"with {pinned['versions'][name]}: run make versions"
        )
    recorded = {k: v["reproduces"] for k, v in pinned["results"].items()}
    assert {k: v["reproduces"] for k, v in live["results"].items()} == recorded


def test_every_reproduction_names_a_gallery_page() -> None:
    data = _recorded()
    for name, repro in data["repros"].items():
        assert list(ROOT.glob(f"examples/*/{repro['page']}.py")), name
    assert len([e for e in data["environments"] if "transformers" in e["label"]]) >= 4


def test_table_marks_and_links() -> None:
    data = {
        "date": "2026-12-02T00:00:00+00:00",
        "python": "3.11",
        "repros": {"r": {"page": "plot_save_load_tied", "failure": "it fails"}},
        "environments": [
            {"label": "old", "cannot_run": "ImportError: x", "results": {}},
            {
                "label": "pinned",
                "versions": {"transformers": "5.23.0", "torch": "2.13.0"},
                "results": {"r": {"reproduces": True, "seen": "x"}},
            },
        ],
    }
    text = version_table.table(data, ROOT / "examples")
    assert "| Failure | Page | old | transformers 5.23.0 (pinned) |" in text
    assert "{doc}`/auto_examples/fix_save_load/plot_save_load_tied`" in text
    assert "| cannot run: ImportError: x | yes |" in text
