"""The benchmarks page is made from the recorded result files, at every build.

As an extension (``"benchmark_results"`` in ``extensions``), it replaces the line
``{benchmark-results}`` of the page ``benchmark_results_page`` with Markdown tables
made from the ``train_step-*.json`` files in ``benchmark_results_dir`` (the format is
described in that folder's README.md), and rebuilds the page when a file is added,
changed or removed. The page's ``plot`` directive calls
``plot_results(load_results())``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.0"

PATTERN = "train_step-*.json"
MARKER = "{benchmark-results}"
#: The folder of result files, set from ``benchmark_results_dir`` when the
#: configuration is read; :func:`load_results` reads it when given no folder.
_configured: dict[str, Path] = {}

Result = dict[str, Any]


def results_folder() -> Path:
    """The configured ``benchmark_results_dir``.

    Raises
    ------
    RuntimeError
        If no Sphinx build has configured it (the extension is not loaded).
    """
    if "folder" not in _configured:
        raise RuntimeError(
            "benchmark_results: no results folder is configured; add "
            "'benchmark_results' to extensions and set benchmark_results_dir."
        )
    return _configured["folder"]


def result_files(folder: Path | None = None) -> list[Path]:
    """The result files in ``folder`` (default: the configured one), sorted by name."""
    return sorted((folder or results_folder()).glob(PATTERN))


def load_results(folder: Path | None = None) -> list[Result]:
    """The results in ``folder`` (default: the configured one), oldest first."""
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
    if docname != app.config.benchmark_results_page:
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
    page = app.config.benchmark_results_page
    if page not in env.found_docs:
        return []
    seen = {Path(p).resolve() for p in env.dependencies.get(page, ())}
    return [page] if set(result_files()) - seen else []


def check_config(app: Any, config: Any) -> None:
    """``config-inited``: the results folder exists; remember it.

    Raises
    ------
    sphinx.errors.ConfigError
        If ``benchmark_results_dir`` is not set or is not a directory.
    """
    folder = config.benchmark_results_dir
    if not folder or not Path(app.confdir, folder).is_dir():
        raise ConfigError(
            f"benchmark_results_dir is {folder!r}, which is not a directory: set it to "
            "the folder of the benchmark's result files (relative to conf.py)."
        )
    _configured["folder"] = Path(app.confdir, folder).resolve()


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: fill the benchmarks page from the result files."""
    app.add_config_value("benchmark_results_dir", "", "env", str)
    app.add_config_value("benchmark_results_page", "benchmarks", "env", str)
    app.connect("config-inited", check_config)
    app.connect("source-read", _fill_page)
    app.connect("env-get-outdated", _new_results)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
