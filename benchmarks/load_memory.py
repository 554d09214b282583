"""Measure the memory ``weightshare.load`` needs beyond the model it loads into.

A model of eight untied ``nn.Linear(2560, 2560, bias=False)`` layers (fp32, 26 MB
each: a 210 MB checkpoint) is saved with ``weightshare.save``, once per format
(safetensors and torch). A fresh Python process builds the same model and loads
each file into it in turn, while this process reads the child's ``RssAnon``
(anonymous resident memory, from ``/proc/<pid>/status``) about every millisecond.
The peak above the level just before the load, over the file's size, is the ratio
reported; the goal is a ratio under 1/3 for each format. Pages of a memory-mapped
file count as ``RssFile``, not ``RssAnon``: they are page cache, which the kernel
can drop at any time, so they are not counted.

The child imports the same ``weightshare`` as this script (its folder is put first
on the child's ``PYTHONPATH``), so running this script with another ``weightshare``
on the path measures that one. It prints one line per format and writes a JSON
result (format: benchmarks/results/README.md). Linux only (it reads ``/proc``).

Usage: python benchmarks/load_memory.py [--quick] [--out DIR]
(``--quick``: a 34 MB model, a smoke test of seconds.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

import weightshare

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 1
GOAL = 1 / 3  # peak extra anonymous memory over the file size
FORMATS = ("safetensors", "torch")


@dataclass(frozen=True)
class Shape:
    layers: int
    width: int


FULL = Shape(layers=8, width=2560)  # 8 x 26.2 MB = 210 MB (200 MiB)
QUICK = Shape(layers=8, width=1024)  # 8 x 4.2 MB = 34 MB (32 MiB)

# The child: build the model; then for each file say "ready", wait for a line, load
# the file and say "done".
CHILD = """
import sys
from torch import nn
import weightshare
layers, width, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])
for path in paths:
    print("ready", flush=True)
    sys.stdin.readline()
    weightshare.load(model, path)
    print("done", flush=True)
sys.stdin.readline()
"""


def build(shape: Shape) -> nn.Module:
    return nn.Sequential(
        *[nn.Linear(shape.width, shape.width, bias=False) for _ in range(shape.layers)]
    )


def rss_anon(pid: int) -> int:
    """The process's anonymous resident memory in bytes (``RssAnon``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, f"no RssAnon in /proc/{pid}/status"
    return int(match.group(1)) * 1024


class Sampler(threading.Thread):
    """Reads a process's RssAnon about every millisecond; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_anon(pid)
        self.samples = 1
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_anon(self.pid))
            self.samples += 1
            time.sleep(0.001)


def child_env() -> dict[str, str]:
    """This environment, with this script's weightshare first on PYTHONPATH."""
    env = dict(os.environ)
    home = str(Path(weightshare.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (home, env.get("PYTHONPATH", "")) if p
    )
    return env


def measure(shape: Shape, paths: list[Path]) -> list[dict[str, Any]]:
    """Load each file in one child process, sampling its RssAnon during each load."""
    args = [str(shape.layers), str(shape.width), *map(str, paths)]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        runs = [measure_one(child, path) for path in paths]
        child.stdin.write("exit\n")
        child.stdin.flush()
    return runs


def measure_one(child: subprocess.Popen[str], path: Path) -> dict[str, Any]:
    """Have the waiting child load ``path``; measure its RssAnon meanwhile."""
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == "ready", f"the child is not ready: {line!r}"
    baseline = max(rss_anon(child.pid) for _ in range(5))
    sampler = Sampler(child.pid)
    sampler.start()
    start = time.perf_counter()
    child.stdin.write("go\n")
    child.stdin.flush()
    line = child.stdout.readline().strip()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    assert line == "done", f"the child did not load {path}: {line!r}"
    after = rss_anon(child.pid)
    peak = max(sampler.peak, after)
    size = path.stat().st_size
    return {
        "file_bytes": size,
        "baseline_anon_bytes": baseline,
        "peak_anon_bytes": peak,
        "after_anon_bytes": after,
        "peak_extra_anon_bytes": peak - baseline,
        "ratio": (peak - baseline) / size,
        "samples": sampler.samples,
        "load_seconds": seconds,
    }


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def benchmark(shape: Shape, quick: bool) -> dict[str, Any]:
    date = datetime.now(UTC)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build(shape)
        paths = {fmt: Path(tmp) / f"model.{fmt}" for fmt in FORMATS}
        for fmt, path in paths.items():
            weightshare.save(model, path, format=fmt)  # type: ignore[arg-type]
        del model
        for fmt, run in zip(FORMATS, measure(shape, list(paths.values())), strict=True):
            runs.append({"format": fmt, **run, "met": run["ratio"] < GOAL})
    return {
        "benchmark": "load_memory",
        "schema": SCHEMA,
        "date": date.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "weightshare": weightshare.__version__,
        "config": {"quick": quick, **asdict(shape), "dtype": "float32"},
        "goal": f"peak extra RssAnon during the load < {GOAL:.4f} x the file size",
        "runs": runs,
        "met": all(run["met"] for run in runs),
    }


def output_path(result: dict[str, Any], folder: Path) -> Path:
    """``load_memory-<UTC date and time>.json``."""
    stamp = result["date"][:19].replace(":", "")
    return folder / f"load_memory-{stamp}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 34 MB smoke test")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"folder for the JSON ({RESULTS})"
    )
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    result = benchmark(shape, args.quick)
    print(
        f"torch {result['torch']}, safetensors {result['safetensors']}, "
        f"weightshare {result['weightshare']} from "
        f"{Path(weightshare.__file__).resolve().parent}"
    )
    for run in result["runs"]:
        print(
            f"{run['format']:>11}: file {run['file_bytes'] / 2**20:7.1f} MiB, peak "
            f"extra RssAnon {run['peak_extra_anon_bytes'] / 2**20:7.1f} MiB, ratio "
            f"{run['ratio']:.3f} (goal < {GOAL:.3f}), {run['samples']} samples "
            f"in {run['load_seconds']:.2f} s"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = output_path(result, args.out)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    print("load memory benchmark: " + ("ok" if result["met"] else "FAILED"))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
