"""benchmarks/check_speed.py runs at a small size and writes its JSON (a smoke test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "check_speed.py"


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
    assert [goal["met"] for goal in data["goals"]] == [None, None]  # not judged
    assert "load_file_pread" in data["goals"][0]["goal"]
    assert "operation_time_vs_load_file" in data["ratios"]  # recorded, not judged
