"""benchmarks/check_speed.py runs at a small size and writes its JSON (a smoke test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "check_speed.py"


@pytest.mark.slow  # a whole benchmark script in a new process: make test runs it
def test_check_benchmark_runs_quick(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(
        "check benchmark: ran (quick: no goals checked)"
    )
    [written] = tmp_path.glob("check_speed-quick-*.json")
    data = json.loads(written.read_text())
    assert data["benchmark"] == "check_speed" and data["rounds"] == 1
    assert set(data["medians"]) == {"check", "load_file", "load_file_pread"}
    assert [goal["met"] for goal in data["goals"]] == [None] * 4  # not judged
    assert "load_file_pread" in data["goals"][0]["goal"]
    assert "operation_time_vs_load_file" in data["ratios"]  # recorded, not judged
    startup = data["startup"]
    assert set(startup["medians"]) == {"check_command", "import_torch", "python_pass"}
    assert startup["commands"]["check_command"] == ["check", "small.safetensors"]
    assert all(run["status"] == 0 for run in startup["samples"]["check_command"])
    assert "import torch" in data["goals"][2]["goal"]
    assert "100 MB" in data["goals"][3]["goal"]
    assert "whole processes" in result.stdout
    for kind in ("onnx", "gguf"):  # one exported file of each kind, found twice
        exported = data["exported"][kind]
        assert all(run["status"] == 1 for run in exported["samples"]["check"])
        assert exported["time_vs_reader"] > 0
    assert "exported files" in result.stdout


def test_recorded_results_name_no_path_of_the_machine() -> None:
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for recorded in results.glob("*.json"):
        text = recorded.read_text()
        # A JSON string that starts at a top-level folder of a machine's disk.
        for folder in ("tmp", "home", "root", "work", "Users"):
            prefix = f'"/{folder}/'
            assert prefix not in text, f"{recorded.name} records a path {prefix}…"
