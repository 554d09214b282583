"""Time the site's build and test commands, as a newcomer's machine would run them.

Measures, in one run and in this order:

1. a cold build: `make clean` then `make html` (the virtual environment is kept, the
   built site and sphinx-gallery's cache of executed examples are not);
2. a no-op rebuild: `make html` again with nothing changed;
3. `make test` (skip it with --no-test), with everything it runs: unit tests,
   doctests, the browser tests and the download tests. The download tests' virtual
   environments in `_build/download-envs` are kept by `make clean`, like `.venv`; the
   first run on a machine makes them (a few minutes of pip, not measured here).

Goals on the 2-core reference machine: cold build under 90 s, no-op rebuild under 5 s,
`make test` under 5 minutes.
Usage: python benchmarks/site_build.py [--no-test] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"cold build": 90.0, "no-op rebuild": 5.0, "make test": 300.0}


def timed(*target: str) -> float:
    """Seconds that `make TARGET` takes; exits with make's output if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        ["make", "--no-print-directory", *target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"make {' '.join(target)} failed:\n{done.stdout[-3000:]}{done.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-test", action="store_true", help="skip timing make test")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    timed("venv")  # set-up is not part of any measurement
    if not args.no_test and not (ROOT / "_build" / "download-envs").is_dir():
        print("note: no _build/download-envs yet; this make test makes them (slower)")
    timed("clean")
    steps = [("cold build", "html"), ("no-op rebuild", "html")]
    if not args.no_test:
        steps.append(("make test", "test"))
    results = {}
    for name, target in steps:
        results[name] = seconds = timed(target)
        goal = GOALS.get(name)
        verdict = ""
        if goal is not None:
            verdict = f" (goal < {goal:.0f} s: {'met' if seconds < goal else 'MISSED'})"
        print(f"{name:>14}: {seconds:7.1f} s{verdict}", flush=True)
    if args.json:
        record = {
            "date": date.today().isoformat(),
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "seconds": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
