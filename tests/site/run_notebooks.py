"""Execute notebooks one after another, each in a new Jupyter kernel of its own.

Run by ``test_downloads.py`` with the Python of the notebook environment (the one
with nbclient and ipykernel), as ``python run_notebooks.py JOBS.json RESULTS``: the
first file holds a list of ``{"notebook": PATH, "skip_first_cell": BOOL}``. Each
notebook runs in its own folder (the kernel's working directory) and its own kernel
process, as Jupyter runs it; what this script saves over ``jupyter execute`` per
notebook is only the start of a Python process that imports nbclient. One JSON line
per notebook, ``{"notebook", "ok", "error", "seconds"}``, is appended to RESULTS (a
file, not stdout, which the kernels share).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, skip_first_cell: bool) -> dict[str, object]:
    notebook = nbformat.read(path, as_version=4)
    if skip_first_cell:
        first = next(n for n, c in enumerate(notebook.cells) if c.cell_type == "code")
        del notebook.cells[first]
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except Exception:  # a cell's error, or a kernel that died: reported, not raised
        error = traceback.format_exc(limit=2)[-6000:]
    else:
        error = ""
    seconds = round(time.perf_counter() - start, 2)
    return {"notebook": str(path), "ok": not error, "error": error, "seconds": seconds}


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for job in jobs:
        result = execute(Path(job["notebook"]), bool(job["skip_first_cell"]))
        with Path(sys.argv[2]).open("a") as results:
            results.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
