"""The version table of the symptom index, made from the newest ``versions-*.json``.

As an extension (``"version_table"`` in ``extensions``), it replaces the line
``{version-table}`` of the page ``version_table_page`` with a Markdown table: one
row per reproduction of ``benchmarks/versions.py``, linking the gallery page that
shows it, and one column per environment (the exact transformers, peft, accelerate
and safetensors versions in its header), each cell "yes" (the failure happens),
"no", or "cannot run" with the reason. The page is rebuilt when the file changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__version__ = "1.0"

PATTERN = "versions-*.json"
MARKER = "{version-table}"
MARKS = {True: "yes", False: "no", None: "cannot run"}


def newest(folder: Path) -> Path | None:
    """The newest result file in ``folder`` (names sort by date), or None."""
    files = sorted(folder.glob(PATTERN))
    return files[-1] if files else None


def _header(env: dict[str, Any]) -> str:
    versions = env.get("versions") or {}
    parts = [
        f"{name} {versions[name]}"
        for name in ("transformers", "peft", "accelerate", "safetensors")
        if versions.get(name)
    ]
    pinned = " (pinned)" if env["label"] == "pinned" else ""
    return (", ".join(parts) or env["label"]) + pinned


def _page(stem: str, examples: Path) -> str:
    found = sorted(examples.glob(f"*/{stem}.py"))
    if not found:
        return stem
    return f"{{doc}}`/auto_examples/{found[0].parent.name}/{stem}`"


def table(data: dict[str, Any], examples: Path) -> str:
    """The Markdown table of one result file."""
    envs = data["environments"]
    lines = [
        "| Failure | Page | " + " | ".join(_header(env) for env in envs) + " |",
        "|---|---|" + "---|" * len(envs),
    ]
    for name, repro in data["repros"].items():
        cells = []
        for env in envs:
            if "cannot_run" in env:
                cells.append(f"cannot run: {env['cannot_run']}")
                continue
            result = env["results"][name]
            mark = MARKS[result["reproduces"]]
            cells.append(mark if mark != "cannot run" else f"{mark}: {result['seen']}")
        lines.append(
            f"| {repro['failure']} (`{name}`) | {_page(repro['page'], examples)} | "
            + " | ".join(cells)
            + " |"
        )
    torch = envs[-1].get("versions", {}).get("torch", "?")
    lines.append("")
    lines.append(
        f"Measured {data['date'][:10]} with torch {torch} and Python {data['python']}."
    )
    return "\n".join(lines)


def _fill_page(app: Any, docname: str, source: list[str]) -> None:
    """``source-read``: put the table in the page, and rebuild it when it changes."""
    if docname != app.config.version_table_page or MARKER not in source[0]:
        return
    folder = Path(app.confdir, app.config.version_table_dir)
    path = newest(folder)
    app.env.note_dependency(str(Path(__file__).resolve()))
    if path is None:
        text = "No version results are recorded yet: run `make versions`."
    else:
        app.env.note_dependency(str(path))
        text = table(json.loads(path.read_text()), Path(app.confdir, "examples"))
    source[0] = source[0].replace(MARKER, text)


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: fill the symptom index's version table."""
    app.add_config_value("version_table_dir", "benchmarks/results", "env", str)
    app.add_config_value("version_table_page", "symptoms", "env", str)
    app.connect("source-read", _fill_page)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
