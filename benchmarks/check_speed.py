"""Time ``weightshare.check`` against loading every tensor to find a stored-twice pair.

The file: a GPT-2-small-shaped safetensors file of about 500 MB (vocabulary 50257,
width 768, 7 blocks, float32, random values) whose output layer ``lm_head.weight``
is a copy of the embedding ``wte.weight``: one stored-twice pair of 154 MB each.
The seven blocks give many tensors of equal dtype and shape, which every method
must compare.

The methods, each run in its own process, taking turns round by round:

* ``check``: ``weightshare.check(path)``, which reads the header and compares
  bytes through ``mmap``;
* ``load_file``: ``safetensors.torch.load_file(path)``, then ``torch.equal`` on
  every pair of tensors of equal dtype and shape (the naive way). Since safetensors
  0.8 its default backend is ``"mmap"``: the tensors are views of the mapped file,
  read only where ``torch.equal`` touches them, so "loading" costs nothing up front;
* ``load_file_pread``: the same with ``backend="pread"``, which reads every tensor
  into memory, as loading did before.

Each process reports the seconds its operation took (imports excluded) and its
peak resident memory (``VmHWM``); the parent also times the whole process. All
read the file from the page cache (it was just written). ``torch.equal`` runs on
torch's default threads, so on a shared machine the memory-mapped ``load_file`` is
fast when the cores are idle and many times slower when another process holds one:
the script prints the fastest round of each method besides the median. The goals:
the median time of ``check`` under a quarter of ``load_file_pread``'s (loading every
tensor), and the memory check adds to its process, beyond the imports, under a
quarter of the file size. Against the memory-mapped ``load_file`` the time ratio is
recorded, not judged: neither reads a byte before comparing, so both read the same
2 × 154 MB, and no exact method can take a quarter of that time.

The start-up of the command as a whole: ``weightshare check`` on a small
safetensors file (a few tensors, 20 kB), run as its own process, against
``python -c "import torch"`` and ``python -c pass``, taking turns round by round;
each process's wall time and peak memory (``ru_maxrss``, from ``os.wait4``). The
goals: the command's median time under a fifth of ``import torch``'s, and its peak
memory under 100 MB (it imports neither torch nor transformers for a safetensors
file). The result is
printed and written to ``benchmarks/results/check_speed-<UTC date and time>.json``;
the last line is ``check benchmark: ok`` when every goal is met (exit status 1
otherwise, naming the goals missed).

Exported files: one ONNX model and one GGUF file of the same tied vocabulary
matrix (vocabulary x width, float32), each holding it twice as exporters and
converters write it: the ONNX file as ``wte.weight`` and its transpose (the
TorchScript exporter's constant folding), the GGUF file as ``token_embd.weight``
and a copy ``output.weight``. Each is checked by ``weightshare check`` as its own
process, against a process that only reads the file with the format's own reader
(``onnx.load`` and ``to_array`` on every initializer; ``GGUFReader`` and a pass
over every tensor's data), taking turns; the ratios are recorded, not judged (the
check does that reading and then compares).

Usage: python benchmarks/check_speed.py [--quick] [--rounds N] [--out DIR]
(``--quick``: an 11 MB file and one round, a smoke test; no goals are checked.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("check", "load_file", "load_file_pread")
GOAL_TIME_RATIO = 0.25
GOAL_MEMORY_RATIO = 0.25
GOAL_STARTUP_RATIO = 0.2  # the command's whole process against `import torch`
GOAL_STARTUP_MEMORY = 100e6  # bytes of peak memory of the command's process
STARTUP = ("check_command", "import_torch", "python_pass")
EXPORTED = ("onnx", "gguf")
FULL = {"vocab": 50257, "width": 768, "blocks": 7, "context": 1024, "rounds": 11}
QUICK = {"vocab": 2000, "width": 256, "blocks": 2, "context": 128, "rounds": 1}


def write_file(path: Path, shape: dict[str, int]) -> dict[str, Any]:
    """The GPT-2-shaped file with ``lm_head.weight`` a copy of ``wte.weight``."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    v, d = shape["vocab"], shape["width"]

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator)

    tensors = {"wte.weight": randn(v, d), "wpe.weight": randn(shape["context"], d)}
    for block in range(shape["blocks"]):
        for name, size in {
            "ln_1.weight": (d,),
            "ln_1.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d),
            "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d),
            "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,),
            "ln_2.bias": (d,),
            "mlp.c_fc.weight": (d, 4 * d),
            "mlp.c_fc.bias": (4 * d,),
            "mlp.c_proj.weight": (4 * d, d),
            "mlp.c_proj.bias": (d,),
        }.items():
            tensors[f"h.{block}.{name}"] = randn(*size)
    tensors["ln_f.weight"] = randn(d)
    tensors["ln_f.bias"] = randn(d)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()  # stored twice
    save_file(tensors, str(path))
    return {
        "bytes": path.stat().st_size,
        "tensors": len(tensors),
        "duplicate": ["lm_head.weight", "wte.weight"],
        "duplicate_bytes": tensors["wte.weight"].nbytes,
        "shape": shape,
    }


def startup_commands(path: Path) -> dict[str, list[str]]:
    """The three whole processes timed for start-up."""
    script = Path(sys.executable).with_name("weightshare")
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "weightshare"]
    )
    return {
        "check_command": [*command, "check", str(path)],
        "import_torch": [sys.executable, "-c", "import torch"],
        "python_pass": [sys.executable, "-c", "pass"],
    }


def run_process(command: list[str]) -> dict[str, Any]:
    """One process's wall time, peak memory (its own ``ru_maxrss``) and status."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": seconds,
        "peak_rss": usage.ru_maxrss * 1024,  # kilobytes on Linux
        "status": process.returncode,
    }


def startup(path: Path, rounds: int) -> dict[str, Any]:
    """Every round runs the three processes, in turns; medians and ratios."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {
        f"layer{i}.weight": torch.randn(40, 32, generator=generator) for i in range(4)
    }
    save_file(tensors, str(path))
    commands = startup_commands(path)
    # The processes are started by a small worker that has not imported torch: a
    # child's ru_maxrss starts from its parent's at fork, so this process (which
    # has) would lend each of them its 250 MB.
    done = subprocess.run(
        [sys.executable, __file__, "--startup-worker", str(path), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    )
    samples: dict[str, list[dict[str, Any]]] = json.loads(done.stdout)
    for name, runs in samples.items():
        assert all(run["status"] == 0 for run in runs), (name, runs)
    medians = {
        name: {
            "seconds": statistics.median(run["seconds"] for run in runs),
            "peak_rss": statistics.median(run["peak_rss"] for run in runs),
        }
        for name, runs in samples.items()
    }
    check, torch_ = medians["check_command"], medians["import_torch"]
    return {
        "file_bytes": path.stat().st_size,
        # The file's name only: the result records no path of the machine it ran on.
        "commands": {
            name: [
                path.name if arg == str(path) else arg for arg in commands[name][-2:]
            ]
            for name in STARTUP
        },
        "samples": samples,
        "medians": medians,
        "time_vs_import_torch": check["seconds"] / torch_["seconds"],
        "time_vs_python_pass": check["seconds"] / medians["python_pass"]["seconds"],
    }


def startup_worker(path: str, rounds: int) -> None:
    """Run the start-up processes in turns; print their samples as JSON."""
    commands = startup_commands(Path(path))
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in STARTUP}
    for number in range(rounds):
        order = STARTUP if number % 2 == 0 else STARTUP[::-1]
        for name in order:
            samples[name].append(run_process(commands[name]))
    print(json.dumps(samples))


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_check(path: str) -> list[list[str]]:
    import weightshare

    report = weightshare.check(path)
    return [sorted(f.names) for f in report.findings if f.kind == "duplicate"]


def run_load_file(path: str, backend: str = "mmap") -> list[list[str]]:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(path, backend=backend)
    by_kind: dict[tuple[Any, ...], list[str]] = {}
    for name, tensor in tensors.items():
        by_kind.setdefault((tensor.dtype, tuple(tensor.shape)), []).append(name)
    found = []
    for names in by_kind.values():
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if torch.equal(tensors[a], tensors[b]):
                    found.append(sorted([a, b]))
    return found


def run_load_file_pread(path: str) -> list[list[str]]:
    return run_load_file(path, backend="pread")


def worker(method: str, path: str) -> None:
    """Run one method, after its imports, and print its measurements as JSON."""
    if method == "check":
        import weightshare._checkpoint._check  # noqa: F401  (imported outside the timing)

        operation = run_check
    else:
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401

        operation = run_load_file if method == "load_file" else run_load_file_pread
    before = peak_rss()
    start = time.perf_counter()
    found = operation(path)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_rss": peak_rss(), "rss_after_imports": before}
    print(json.dumps({**result, "found": found}))


def measure(method: str, path: Path) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", method, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    sample: dict[str, Any] = json.loads(done.stdout)
    sample["process_seconds"] = time.perf_counter() - start
    return sample


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per method: the median of each number, and the fastest operation."""
    keys = ("seconds", "process_seconds", "peak_rss", "rss_after_imports")
    return {
        method: {key: statistics.median(s[key] for s in runs) for key in keys}
        | {"best_seconds": min(s["seconds"] for s in runs)}
        for method, runs in samples.items()
    }


def compare(
    medians: dict[str, dict[str, float]], file_bytes: int, quick: bool
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Ratios of check to each other method, and the goals (not judged if quick).

    The time goal is against ``load_file_pread``, which loads every tensor: the
    memory-mapped ``load_file`` loads nothing until ``torch.equal`` reads it, so it
    reads exactly the bytes check reads, and its ratio is recorded, not judged. The
    memory goal counts what check adds to its process after the imports (importing
    ``weightshare`` imports torch, about 230 MB whatever the file).
    """
    check = medians["check"]
    ratios: dict[str, float] = {}
    goals: list[dict[str, Any]] = []
    for method in METHODS[1:]:
        ratio = check["seconds"] / medians[method]["seconds"]
        ratios[f"operation_time_vs_{method}"] = ratio
        ratios[f"process_time_vs_{method}"] = (
            check["process_seconds"] / medians[method]["process_seconds"]
        )
        ratios[f"fastest_operation_vs_{method}"] = (
            check["best_seconds"] / medians[method]["best_seconds"]
        )
    ratio = ratios["operation_time_vs_load_file_pread"]
    goal = f"check's median operation time under {GOAL_TIME_RATIO} of load_file_pread"
    goals.append({"goal": goal, "value": ratio, "met": None if quick else ratio < 0.25})
    ratios["check_peak_memory_over_file_size"] = check["peak_rss"] / file_bytes
    added = (check["peak_rss"] - check["rss_after_imports"]) / file_bytes
    ratios["check_added_memory_over_file_size"] = added
    goal = f"check's memory beyond its imports under {GOAL_MEMORY_RATIO} of the file"
    met = None if quick else added < GOAL_MEMORY_RATIO
    goals.append({"goal": goal, "value": added, "met": met})
    return ratios, goals


def write_exported(folder: Path, shape: dict[str, int]) -> dict[str, Path]:
    """The ONNX and GGUF files, each holding the vocabulary matrix twice."""
    import gguf
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((shape["vocab"], shape["width"]), dtype=np.float32)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1])
    logits = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [1, shape["vocab"]]
    )
    nodes = [
        helper.make_node("Gather", ["wte.weight", "ids"], ["h"]),
        helper.make_node("MatMul", ["h", "folded"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(matrix, "wte.weight"),
        numpy_helper.from_array(np.ascontiguousarray(matrix.T), "folded"),
    ]
    graph = helper.make_graph(nodes, "tied", [ids], [logits], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    paths = {"onnx": folder / "model.onnx", "gguf": folder / "model.gguf"}
    onnx.save(model, str(paths["onnx"]))
    writer = gguf.GGUFWriter(str(paths["gguf"]), "llama")
    writer.add_tensor("token_embd.weight", matrix)
    writer.add_tensor("output.weight", matrix.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return paths


READERS = {
    "onnx": "import onnx, onnx.numpy_helper as h, sys; "
    "[h.to_array(t) for t in onnx.load(sys.argv[1]).graph.initializer]",
    "gguf": "import gguf, sys; "
    "[t.data.sum() for t in gguf.GGUFReader(sys.argv[1]).tensors]",
}


def exported(folder: Path, shape: dict[str, int], rounds: int) -> dict[str, Any]:
    """``weightshare check`` against the format's reader, as whole processes."""
    paths = write_exported(folder, shape)
    done = subprocess.run(
        [sys.executable, __file__, "--exported-worker", str(folder), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
    )
    samples: dict[str, dict[str, list[dict[str, Any]]]] = json.loads(done.stdout)
    result: dict[str, Any] = {}
    for kind in EXPORTED:
        runs = samples[kind]
        assert all(run["status"] == 1 for run in runs["check"]), runs["check"]
        assert all(run["status"] == 0 for run in runs["reader"]), runs["reader"]
        medians = {
            name: {
                key: statistics.median(run[key] for run in runs[name])
                for key in ("seconds", "peak_rss")
            }
            for name in runs
        }
        result[kind] = {
            "file_bytes": paths[kind].stat().st_size,
            "samples": runs,
            "medians": medians,
            "time_vs_reader": medians["check"]["seconds"]
            / medians["reader"]["seconds"],
        }
    return result


def exported_worker(folder: str, rounds: int) -> None:
    """Run check and the reader on each exported file, in turns; print JSON."""
    check = startup_commands(Path(folder) / "x")["check_command"][:-1]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind in EXPORTED:
        path = str(Path(folder) / f"model.{kind}")
        commands = {
            "check": [*check, path],
            "reader": [sys.executable, "-c", READERS[kind], path],
        }
        samples[kind] = {"check": [], "reader": []}
        for number in range(rounds):
            for name in ("check", "reader") if number % 2 == 0 else ("reader", "check"):
                samples[kind][name].append(run_process(commands[name]))
    print(json.dumps(samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small file, one round")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result folder")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PATH"))
    parser.add_argument("--startup-worker", nargs=2, metavar=("PATH", "ROUNDS"))
    parser.add_argument("--exported-worker", nargs=2, metavar=("FOLDER", "ROUNDS"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    if args.startup_worker:
        startup_worker(args.startup_worker[0], int(args.startup_worker[1]))
        return 0
    if args.exported_worker:
        exported_worker(args.exported_worker[0], int(args.exported_worker[1]))
        return 0
    shape = QUICK if args.quick else FULL
    rounds = args.rounds or shape["rounds"]
    date = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        file = write_file(path, {k: v for k, v in shape.items() if k != "rounds"})
        print(
            f"file: {file['bytes'] / 1e6:.0f} MB, {file['tensors']} tensors, "
            f"{' and '.join(file['duplicate'])} stored twice "
            f"({file['duplicate_bytes'] / 1e6:.0f} MB each); {rounds} round(s)"
        )
        samples: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        for number in range(rounds):
            order = METHODS if number % 2 == 0 else METHODS[::-1]
            for method in order:
                samples[method].append(measure(method, path))
        started = startup(Path(tmp) / "small.safetensors", rounds)
        sizes = {k: shape[k] for k in ("vocab", "width")}
        formats = exported(Path(tmp), sizes, rounds)
    for method, runs in samples.items():
        for run in runs:
            assert run["found"] == [sorted(file["duplicate"])], (method, run["found"])
    medians = summarise(samples)
    ratios, goals = compare(medians, file["bytes"], args.quick)
    ratio = started["time_vs_import_torch"]
    goal = f"the command's whole process under {GOAL_STARTUP_RATIO} of import torch's"
    met = None if args.quick else ratio < GOAL_STARTUP_RATIO
    goals.append({"goal": goal, "value": ratio, "met": met})
    memory = started["medians"]["check_command"]["peak_rss"]
    goal = f"the command's peak memory under {GOAL_STARTUP_MEMORY / 1e6:.0f} MB"
    met = None if args.quick else memory < GOAL_STARTUP_MEMORY
    goals.append({"goal": goal, "value": memory, "met": met})
    for method in METHODS:
        m = medians[method]
        print(
            f"  {method:<16} {m['seconds']:7.3f} s operation "
            f"(fastest {m['best_seconds']:.3f} s), "
            f"{m['process_seconds']:6.2f} s whole process, "
            f"peak memory {m['peak_rss'] / 1e6:4.0f} MB "
            f"({m['rss_after_imports'] / 1e6:.0f} MB after imports)"
        )
    for method in METHODS[1:]:
        print(
            f"check / {method}: {ratios[f'operation_time_vs_{method}']:.3f} of the "
            f"median operation time ({ratios[f'fastest_operation_vs_{method}']:.3f} "
            f"of the fastest), {ratios[f'process_time_vs_{method}']:.3f} of the "
            "whole process time"
        )
    memory = ratios["check_peak_memory_over_file_size"]
    print(f"check's peak memory / file size: {memory:.3f}")
    added = ratios["check_added_memory_over_file_size"]
    print(f"check's memory beyond its imports / file size: {added:.3f}")
    print("start-up, whole processes (median):")
    for name in STARTUP:
        m = started["medians"][name]
        memory = m["peak_rss"] / 1e6
        print(f"  {name:<16} {m['seconds']:7.3f} s, peak memory {memory:4.0f} MB")
    print(
        f"weightshare check / import torch: {started['time_vs_import_torch']:.3f} of "
        f"the time; / python -c pass: {started['time_vs_python_pass']:.2f}"
    )
    print("exported files, whole processes (median):")
    for kind in EXPORTED:
        m = formats[kind]["medians"]
        print(
            f"  {kind}: {formats[kind]['file_bytes'] / 1e6:.0f} MB; weightshare check "
            f"{m['check']['seconds']:.2f} s, {m['check']['peak_rss'] / 1e6:.0f} MB; "
            f"the format's reader {m['reader']['seconds']:.2f} s, "
            f"{m['reader']['peak_rss'] / 1e6:.0f} MB; ratio "
            f"{formats[kind]['time_vs_reader']:.2f}"
        )
    result = {
        "benchmark": "check_speed",
        "schema": 2,
        "date": date.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count()},
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": _versions(),
        "file": file,
        "rounds": rounds,
        "page_cache": "warm: the file was just written",
        "samples": samples,
        "medians": medians,
        "ratios": ratios,
        "startup": started,
        "exported": formats,
        "goals": goals,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"check_speed-{'quick-' * args.quick}{date:%Y-%m-%dT%H%M%S}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / name}")
    if args.quick:
        print("check benchmark: ran (quick: no goals checked)")
        return 0
    missed = [goal["goal"] for goal in goals if not goal["met"]]
    if not missed:
        print("check benchmark: ok")
        return 0
    print(f"check benchmark: FAILED ({'; '.join(missed)})")
    return 1


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "safetensors", "onnx", "gguf", "weightshare")
    return {name: version(name) for name in names}


if __name__ == "__main__":
    sys.exit(main())
