"""benchmarks/load_memory.py runs and meets its goal at a small size (34 MB).

The goal: while weightshare.load reads a checkpoint, the process's anonymous memory
grows by less than a third of the file's size (reading the whole file into memory
and then parsing it took twice the file's size).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_memory.py"


@pytest.mark.slow  # a whole benchmark script in a new process: make test runs it
def test_load_memory_benchmark_runs_quick(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("load memory benchmark: ok")
    (path,) = tmp_path.glob("load_memory-*.json")
    written = json.loads(path.read_text())
    assert written["benchmark"] == "load_memory" and written["schema"] == 1
    assert [run["format"] for run in written["runs"]] == ["safetensors", "torch"]
    for run in written["runs"]:
        assert run["file_bytes"] > 32 * 2**20
        assert run["ratio"] < 1 / 3 and run["met"], run
        assert run["samples"] > 1
