"""benchmarks/inspect_speed.py runs and meets its goal at a tiny size (a smoke test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inspect_speed.py"


@pytest.mark.slow  # a whole benchmark script in a new process: make test runs it
def test_inspect_benchmark_runs_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("inspect benchmark: ok")
    assert "TieGuard construct + check" in result.stdout
