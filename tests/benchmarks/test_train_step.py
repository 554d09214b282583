"""benchmarks/train_step.py runs (a tiny smoke test, not timed) and writes its JSON;
the benchmarks page's extension (docs/_ext/benchmark_results.py) tabulates and plots
any results, and none. The script is run, never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchmark_results as report  # docs/_ext/, on sys.path through conftest
import matplotlib.pyplot as plt
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


#: The tests that read the benchmark's tiny run (a whole script in a new process, about
#: 5 s): ``make test`` runs them, ``make check`` leaves them out.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("results")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"]
    result = subprocess.run(
        [*command, "--out", str(out)],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    files = list(out.glob("train_step-cpu-*.json"))
    assert len(files) == 1, result.stdout
    assert f"wrote {files[0]}" in result.stdout
    record: dict[str, Any] = json.loads(files[0].read_text())
    return record


@slow
def test_the_record_has_every_documented_key(tiny_result: dict[str, Any]) -> None:
    for key in ("benchmark", "schema", "date", "device", "load_average", "torch"):
        assert key in tiny_result
    for key in ("config", "analytic_saving_bytes", "peak_bf16_flops"):
        assert key in tiny_result
    assert tiny_result["device"]["type"] == "cpu"
    assert tiny_result["device"]["name"]
    assert tiny_result["config"]["shape"] == "tiny"
    assert tiny_result["date"][:2] == "20"


@slow
def test_tied_and_untied_rows(tiny_result: dict[str, Any]) -> None:
    runs = tiny_result["runs"]
    assert [(r["tied"], r["compiled"]) for r in runs] == [(True, False), (False, False)]
    tied, untied = runs
    v, d = tiny_result["config"]["vocab_size"], tiny_result["config"]["d_model"]
    assert untied["parameters"] - tied["parameters"] == v * d
    assert tied["matmul_parameters"] == untied["matmul_parameters"]
    assert tied["flops_per_token"] == untied["flops_per_token"]
    for run in runs:
        assert run["step_ms"] > 0 and run["tokens_per_s"] > 0
        assert run["mfu"] is None  # a CPU has no known bf16 peak
        assert len(run["step_ms_samples"]) == tiny_result["config"]["rounds"]


@slow
def test_memory_saving_is_reported_against_16_v_d(tiny_result: dict[str, Any]) -> None:
    config = tiny_result["config"]
    analytic = 16 * config["vocab_size"] * config["d_model"]
    assert tiny_result["analytic_saving_bytes"] == analytic
    (comparison,) = tiny_result["comparisons"]
    # The training state loses the V×d weight, its gradient and two AdamW moments,
    # plus the 4-byte step counter AdamW keeps per parameter.
    assert comparison["state_saved_bytes"] == analytic + 4
    # Memory is measured between steps, by a census of live tensors on a CPU:
    # after two warm-up steps it holds the whole state, moments included.
    assert tiny_result["config"]["warmup"] >= 2
    assert tiny_result["config"]["memory_method"].startswith("live tensor storages")
    assert comparison["memory_saved_vs_analytic"] == pytest.approx(1.0, abs=0.01)
    for run in tiny_result["runs"]:
        assert run["memory_bytes"] >= run["state_bytes"] > 0
        assert run["peak_bytes"] is None  # measured on CUDA only


@slow
def test_goals_are_judged_or_left_open(tiny_result: dict[str, Any]) -> None:
    goals = {g["goal"].split(" (")[0]: g for g in tiny_result["goals"]}
    assert goals["memory saved within 10% of 16·V·d"]["met"] is True
    # Two rounds cannot tell a difference from noise, and a CPU has no MFU goal.
    assert goals["tied step time / untied <= 1.00 within noise"]["met"] is None
    mfu = [g for g in tiny_result["goals"] if g["goal"].startswith("MFU")]
    assert mfu[0]["met"] is None and "H100" in mfu[0]["note"]


@slow
def test_report_tabulates_and_plots_results(
    tiny_result: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "train_step-cpu-x-1.json").write_text(json.dumps(tiny_result))
    results = report.load_results(tmp_path)
    table = report.results_table(results)
    assert table.count("\n") == 2  # header, rule, one row
    assert "| eager |" in table and "| 1.0000 |" in table
    assert "open" in report.goals_table(results)
    figure = report.plot_results(results)
    assert len(figure.axes) == 2
    plt.close(figure)


def test_report_handles_no_results(tmp_path: Path) -> None:
    assert report.load_results(tmp_path) == []
    assert "No results" in report.results_table([])
    assert "open" in report.goals_table([])
    figure = report.plot_results([])
    assert figure.get_suptitle() == "no results recorded yet"
    plt.close(figure)


def test_recorded_results_follow_the_format() -> None:
    for result in report.load_results(ROOT / "benchmarks" / "results"):
        assert result["benchmark"] == "train_step" and result["schema"] == 2
        assert len(result["runs"]) == 2 * len(result["comparisons"])
        assert "between steps" in result["config"]["memory_method"]


@slow
def test_the_time_ratio_pairs_rounds_so_a_slow_spell_cancels(
    tiny_result: dict[str, Any],
) -> None:
    tied, untied = tiny_result["runs"]
    pairs = zip(tied["step_ms_samples"], untied["step_ms_samples"], strict=True)
    ratios = sorted(t / u for t, u in pairs)
    (comparison,) = tiny_result["comparisons"]
    middle = len(ratios) // 2
    median = (ratios[middle] + ratios[~middle]) / 2
    assert comparison["step_time_ratio"] == pytest.approx(median)
