"""Load, tabulate and plot the training-step results in benchmarks/results/.

Used at build time by the site's benchmarks page (docs/benchmarks.md): as a Sphinx
extension (``setup``) it replaces the line ``{benchmark-results}`` of that page with
Markdown tables made from the JSON files, and the page's ``plot`` directive calls
:func:`plot_results`. The format of the files is described in results/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PATTERN = "train_step-*.json"
DOCNAME = "benchmarks"  # the page whose marker line is replaced
MARKER = "{benchmark-results}"

Result = dict[str, Any]


def result_files(folder: Path = RESULTS) -> list[Path]:
    """The result files in ``folder``, sorted by name."""
    return sorted(folder.glob(PATTERN))


def load_results(folder: Path = RESULTS) -> list[Result]:
    """The results in ``folder``, oldest first."""
    results = [json.loads(path.read_text()) for path in result_files(folder)]
    return sorted(results, key=lambda r: r["date"])


def _shape(config: dict[str, Any]) -> str:
    return (
        f"V={config['vocab_size']} d={config['d_model']} L={config['n_layer']} "
        f"H={config['n_head']} T={config['context']} B={config['batch']}"
    )


def _mode(compiled: bool) -> str:
    return "compiled" if compiled else "eager"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def results_table(results: list[Result]) -> str:
    """One Markdown row per result and mode: tied against untied."""
    if not results:
        return "No results are recorded yet."
    lines = [
        "| Date | Device | PyTorch | Shape | Mode | Step tied (ms) "
        "| Step untied (ms) | Tied / untied | Tokens/s tied "
        "| Memory saved / 16·V·d | MFU tied |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for result in results:
        runs = result["runs"]
        for comparison, (tied, untied) in zip(
            result["comparisons"], zip(runs[::2], runs[1::2], strict=True), strict=True
        ):
            lines.append(
                f"| {result['date'][:10]} | {result['device']['name']} "
                f"| {result['torch']} | {_shape(result['config'])} "
                f"| {_mode(comparison['compiled'])} | {tied['step_ms']:.2f} "
                f"| {untied['step_ms']:.2f} | {comparison['step_time_ratio']:.3f} "
                f"| {tied['tokens_per_s']:,.0f} "
                f"| {comparison['memory_saved_vs_analytic']:.4f} "
                f"| {_percent(tied['mfu'])} |"
            )
    return "\n".join(lines)


def goals_table(results: list[Result]) -> str:
    """One Markdown row per goal of each result: met, missed or open."""
    if not results:
        return "No goal is measured yet: every goal is open."
    lines = ["| Date | Device | Goal | Value | Status |", "|---|---|---|--:|---|"]
    for result in results:
        for goal in result["goals"]:
            status = {True: "met", False: "**missed**", None: "open"}[goal["met"]]
            value = "–" if goal["value"] is None else f"{goal['value']:.4f}"
            lines.append(
                f"| {result['date'][:10]} | {result['device']['name']} "
                f"| {goal['goal']} | {value} | {status}: {goal['note']} |"
            )
    return "\n".join(lines)


def plot_results(results: list[Result]) -> Any:
    """Two panels, one point per result and mode: the step-time ratio tied / untied
    (with 2 standard errors), and the memory saved over 16·V·d. Both goals sit at 1
    (dashed line).

    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    labels, ratios, errors, savings = [], [], [], []
    for result in results:
        for c in result["comparisons"]:
            labels.append(
                f"{result['device']['name']}\n{_mode(c['compiled'])}, "
                f"{result['date'][:10]}"
            )
            ratios.append(c["step_time_ratio"])
            errors.append(2 * c["step_time_ratio_error"])
            savings.append(c["memory_saved_vs_analytic"])
    rows = range(len(labels))
    fig, axes = plt.subplots(
        1, 2, sharey=True, figsize=(9, 1.6 + 0.4 * max(len(labels), 1))
    )
    axes[0].errorbar(ratios, rows, xerr=errors, fmt="o", color="C0", capsize=3)
    axes[0].set_title("step time, tied / untied\n(goal: ≤ 1 within noise)", fontsize=10)
    axes[1].plot(savings, rows, "o", color="C0")
    axes[1].set_title("memory saved / 16·V·d\n(goal: 1 ± 10%)", fontsize=10)
    low = [r - e for r, e in zip(ratios, errors, strict=True)] + savings
    high = [r + e for r, e in zip(ratios, errors, strict=True)] + savings
    for ax in axes:
        ax.axvline(1.0, color="0.4", linestyle="--", linewidth=1)
        ax.set_xlim(min([0.75, *low]) - 0.05, max([1.25, *high]) + 0.05)
    axes[0].set_yticks(rows, labels, fontsize=8)
    axes[0].set_ylim(max(len(labels), 1) - 0.5, -0.5)  # the oldest result on top
    if not labels:
        fig.suptitle("no results recorded yet")
    fig.tight_layout()
    return fig


def _fill_page(app: Any, docname: str, source: list[str]) -> None:
    """``source-read``: put the tables in the page, and rebuild it when they change."""
    if docname != DOCNAME:
        return
    for path in [Path(__file__).resolve(), *result_files()]:
        app.env.note_dependency(path)
    results = load_results()
    tables = (
        f"### Results\n\n{results_table(results)}\n\n"
        f"### Goal status\n\n{goals_table(results)}\n"
    )
    source[0] = source[0].replace(MARKER, tables)


def _new_results(app: Any, env: Any, *changed: Any) -> list[str]:
    """``env-get-outdated``: a result file the page has not seen makes it outdated.

    Changed and deleted files are caught by Sphinx itself, as noted dependencies.
    """
    if DOCNAME not in env.found_docs:
        return []
    seen = {Path(p).resolve() for p in env.dependencies.get(DOCNAME, ())}
    return [DOCNAME] if set(result_files()) - seen else []


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: fill docs/benchmarks.md from the result files."""
    app.connect("source-read", _fill_page)
    app.connect("env-get-outdated", _new_results)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
