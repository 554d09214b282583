"""Time one training step of a tied GPT against its untied twin.

The model is :class:`weightshare.models.GPT`, whose token embedding ``wte`` is tied to
the output projection ``lm_head``; its twin is the same model built with
``tie_embeddings=False``. The step (``make_step``) is the step of the gallery page "A
GPU training step with tied weights": the same AdamW (fused, lr 3e-4), bf16 autocast
where the device has fast bf16, clipping at norm 1 over ``model.parameters()``,
``zero_grad(set_to_none=True)``, and ``torch.compile`` in the compiled mode. It differs
in two ways, both for timing: it does not return the gradient norm (the page
inspects it; a timed step should not wait for it), and the GPU batch is 16 sequences
instead of the page's 8, to keep a large GPU busy.

For each mode (eager, and compiled when asked) it measures, in one run:

* step time (median over interleaved rounds: tied, untied, untied, tied, ...) and
  tokens per second; the ratio tied / untied is the median of the rounds' ratios;
* memory *between steps*, after the warm-up steps, when the weights, the gradients
  and AdamW's two moments all exist: what the device's allocator holds on CUDA
  (``torch.cuda.memory_allocated``) and MPS, and on a CPU the bytes of every storage
  held by a Python tensor object (found through the garbage collector, each storage
  once), each minus the same reading taken before the model was built. This is the
  quantity the tie should shrink by 16·V·d bytes (fp32 weight, gradient and the two
  AdamW moments of a V×d matrix); the count of the training state
  (:func:`weightshare.training_state_bytes`) is recorded beside it;
* the peak during the warm-up steps, on CUDA only (``max_memory_allocated``): it is
  dominated by activations and the logits, and no goal is set for it;
* model FLOPs utilisation (MFU) by the PaLM formula, 6·N + 12·L·H·Q·T FLOPs per
  token, against the device's bf16 dense peak; not reported for unknown devices.

It prints a table and writes a JSON result (format: benchmarks/results/README.md).

Shapes: GPT-2 small (V=50257, d=768, 12 layers, 12 heads, context 1024) on a GPU, a
small model on CPU, and a tiny one with --tiny (a smoke test: its times mean nothing).

Usage: python benchmarks/train_step.py [--tiny] [--compile {auto,on,off}] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import weightshare
from weightshare.models import GPT, GPTConfig

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 2

# bf16 dense (no sparsity) peak of the spec sheets, in TFLOP/s. The first name found
# in the device's name wins, so the more specific names come first.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    "H200": 989.0,
    "A100": 312.0,
}
MFU_GOAL = 0.45  # GPT-2 small, tied, bf16, compiled, on an H100 SXM
MEMORY_TOLERANCE = 0.10  # measured saving within 10% of 16·V·d


@dataclass(frozen=True)
class Shape:
    """The model and the batch of one benchmark run."""

    model: GPTConfig
    batch: int
    warmup: int  # untimed steps per model (compilation happens here)
    rounds: int  # timed rounds; each model runs `steps` steps per round
    steps: int


SHAPES = {
    "gpu": Shape(GPTConfig(), batch=16, warmup=3, rounds=10, steps=5),
    "cpu": Shape(
        GPTConfig(vocab_size=4096, context=128, n_layer=4, n_head=4, d_model=128),
        batch=4,
        warmup=2,
        rounds=20,
        steps=3,
    ),
    "tiny": Shape(
        GPTConfig(vocab_size=256, context=16, n_layer=1, n_head=2, d_model=32),
        batch=2,
        warmup=2,
        rounds=2,
        steps=1,
    ),
}


def pick_device(name: str) -> torch.device:
    """The device named, or the best one present: CUDA, then MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple {platform.machine()} (MPS)"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_autocast(device: torch.device) -> bool:
    """Whether to run the step under bf16 autocast: where the device has fast bf16.

    CUDA from Ampere on and MPS from macOS 14 on. CPUs stay in fp32: most have no
    bf16 matrix units, and autocast there slows the step down.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        return torch.backends.mps.is_macos_or_newer(14, 0)
    return False


def peak_flops(name: str) -> float | None:
    """The bf16 dense peak FLOP/s of a known GPU, else None."""
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def load_average() -> float | None:
    """The 1-minute load average (other work slows CPU runs); None on Windows."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def live_tensor_bytes() -> int:
    """Bytes of every storage held by a Python tensor object, each storage once.

    A census through the garbage collector: it sees what exists, whatever created
    it, so it is a measurement, not a count of what the optimizer should hold.
    """
    storages: dict[tuple[str, int], int] = {}
    for obj in gc.get_objects():
        # type(), not isinstance(): some module proxies warn when asked their class.
        if not issubclass(type(obj), torch.Tensor):
            continue
        try:
            if obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
        except (ReferenceError, RuntimeError):  # weak proxies, sparse tensors
            continue
        storages[(obj.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def allocated(device: torch.device) -> int:
    """The memory the device holds now (between steps): see the module docstring."""
    synchronize(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return int(torch.mps.current_allocated_memory())
    gc.collect()
    return live_tensor_bytes()


def matmul_parameters(model: GPT) -> int:
    """N of the PaLM formula: parameters that take part in matrix multiplies.

    The position table ``wpe`` is only looked up, and so is ``wte`` when untied;
    tied, ``wte`` is also ``lm_head``, so tied and untied models get the same N.
    """
    lookups = [model.wpe.weight]
    if model.wte.weight is not model.lm_head.weight:
        lookups.append(model.wte.weight)
    unique = weightshare.count_parameters(model).unique
    return unique - sum(p.numel() for p in lookups)


def flops_per_token(model: GPT) -> int:
    """Training FLOPs per token by the PaLM formula: 6·N + 12·L·H·Q·T."""
    c = model.config
    head_dim = c.d_model // c.n_head
    attention = 12 * c.n_layer * c.n_head * head_dim * c.context
    return 6 * matmul_parameters(model) + attention


def make_step(
    model: GPT, device: torch.device, compiled: bool
) -> tuple[torch.optim.AdamW, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The optimizer (created after the move) and one training step of ``model``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)  # the page's
    forward = torch.compile(model) if compiled else model
    bf16 = bf16_autocast(device)

    def step(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(idx)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return loss.detach()

    return optimizer, step


def run_mode(
    shape: Shape, device: torch.device, compiled: bool, peak: float | None
) -> list[dict[str, Any]]:
    """Measure the tied model and its untied twin in one mode; one row each."""
    torch.manual_seed(0)
    size = (shape.batch, shape.model.context + 1)
    tokens = torch.randint(shape.model.vocab_size, size)
    idx, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    models: dict[bool, GPT] = {}
    steps: dict[bool, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    rows: dict[bool, dict[str, Any]] = {}
    for tied in (True, False):
        # Memory: each model is built and warmed up alone (the other one does not
        # exist yet, or is already measured and counted in the base).
        base = allocated(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        model = GPT(replace(shape.model, tie_embeddings=tied)).to(device)
        optimizer, step = make_step(model, device, compiled)
        for _ in range(shape.warmup):  # >= 2: AdamW's moments exist after the first
            step(idx, targets)
        memory = allocated(device) - base
        peak_memory = None
        if device.type == "cuda":
            peak_memory = torch.cuda.max_memory_allocated(device) - base
        state = weightshare.training_state_bytes(model, optimizer)
        models[tied], steps[tied] = model, step
        rows[tied] = {
            "tied": tied,
            "compiled": compiled,
            "memory_bytes": memory,
            "peak_bytes": peak_memory,
            "state_bytes": state,
            "parameters": weightshare.count_parameters(model).unique,
            "matmul_parameters": matmul_parameters(model),
            "flops_per_token": flops_per_token(model),
            "step_ms_samples": [],
        }
    # Time: the two models take turns, so a slow spell of a shared machine hits both.
    for round_ in range(shape.rounds):
        for tied in (True, False) if round_ % 2 == 0 else (False, True):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(shape.steps):
                steps[tied](idx, targets)
            synchronize(device)
            seconds = (time.perf_counter() - start) / shape.steps
            rows[tied]["step_ms_samples"].append(round(seconds * 1e3, 4))
    for row in rows.values():
        samples = row["step_ms_samples"]
        row["step_ms"] = statistics.median(samples)
        row["spread"] = spread(samples)
        row["tokens_per_s"] = shape.batch * shape.model.context / row["step_ms"] * 1e3
        achieved = row["flops_per_token"] * row["tokens_per_s"]
        row["mfu"] = None if peak is None else achieved / peak
    return [rows[True], rows[False]]


def spread(samples: list[float]) -> float:
    """Relative spread of timings: interquartile range over median (0 if < 4)."""
    if len(samples) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


def median_and_error(values: list[float]) -> tuple[float, float]:
    """The median, and its standard error estimated robustly (0 if < 4 values).

    σ is estimated as IQR / 1.349 (exact for a normal distribution), and the
    median's standard error is about 1.253·σ/√n.
    """
    if len(values) < 4:
        return statistics.median(values), 0.0
    q1, median, q3 = statistics.quantiles(values, n=4)
    return median, 1.253 * (q3 - q1) / 1.349 / len(values) ** 0.5


def compare(rows: list[dict[str, Any]], analytic: int) -> dict[str, Any]:
    """What the tie costs in time and saves in memory, in one mode."""
    tied, untied = rows
    # Each round timed both models back to back: the ratio of a round's two times
    # cancels most of a shared machine's slow spells.
    pairs = zip(tied["step_ms_samples"], untied["step_ms_samples"], strict=True)
    ratio, error = median_and_error([t / u for t, u in pairs])
    saved = untied["memory_bytes"] - tied["memory_bytes"]
    state_saved = untied["state_bytes"] - tied["state_bytes"]
    return {
        "compiled": tied["compiled"],
        "step_time_ratio": ratio,
        "step_time_ratio_error": error,
        "memory_saved_bytes": saved,
        "memory_saved_vs_analytic": saved / analytic,
        "state_saved_bytes": state_saved,
        "state_saved_vs_analytic": state_saved / analytic,
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's three goals, each met, missed, or open (None) with a note."""
    out = []
    for c in result["comparisons"]:
        mode = "compiled" if c["compiled"] else "eager"
        rounds = result["config"]["rounds"]
        timing: dict[str, Any] = {
            "goal": f"tied step time / untied <= 1.00 within noise ({mode})",
            "value": c["step_time_ratio"],
            "met": None,
            "note": f"{rounds} rounds are too few to estimate the noise",
        }
        if rounds >= 4:
            error = c["step_time_ratio_error"]
            timing["met"] = c["step_time_ratio"] <= 1.0 + 2 * error
            timing["note"] = f"within noise: ≤ 1 + 2 × standard error {error:.4f}"
        out.append(timing)
        out.append(
            {
                "goal": f"memory saved within 10% of 16·V·d ({mode})",
                "value": c["memory_saved_vs_analytic"],
                "met": abs(c["memory_saved_vs_analytic"] - 1.0) <= MEMORY_TOLERANCE,
                "note": result["config"]["memory_method"],
            }
        )
    name, config = result["device"]["name"], result["config"]
    h100_sxm = "H100" in name and peak_flops(name) == BF16_PEAK_TFLOPS["H100"] * 1e12
    eligible = (
        h100_sxm and config["shape"] == "gpu" and config["autocast"] == "bfloat16"
    )
    compiled_tied = [r for r in result["runs"] if r["tied"] and r["compiled"]]
    mfu_goal: dict[str, Any] = {
        "goal": f"MFU >= {MFU_GOAL:.0%}: GPT-2 small, tied, bf16, compiled, H100 SXM",
        "value": None,
        "met": None,
        "note": "no GPT-2 small run compiled in bf16 on an H100 SXM",
    }
    if eligible and compiled_tied:
        mfu = compiled_tied[0]["mfu"]
        mfu_goal.update(value=mfu, met=mfu >= MFU_GOAL, note=name)
    out.append(mfu_goal)
    return out


def benchmark(
    shape_name: str, device: torch.device, compile_: bool, peak: float | None
) -> dict[str, Any]:
    """Run every mode and return the result record (see results/README.md)."""
    shape = SHAPES[shape_name]
    name = device_name(device)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = load_average()
    runs = []
    for compiled in (False, True) if compile_ else (False,):
        runs += run_mode(shape, device, compiled, peak)
    analytic = 16 * shape.model.vocab_size * shape.model.d_model
    config = {
        "shape": shape_name,
        **{k: v for k, v in asdict(shape.model).items() if k != "tie_embeddings"},
        "batch": shape.batch,
        "warmup": shape.warmup,
        "rounds": shape.rounds,
        "steps_per_round": shape.steps,
        "autocast": "bfloat16" if bf16_autocast(device) else "off",
        "optimizer": "AdamW(fused=True)",
        "memory_method": {
            "cuda": "cuda.memory_allocated between steps",
            "mps": "mps.current_allocated_memory between steps",
        }.get(device.type, "live tensor storages between steps (gc census)"),
    }
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "schema": SCHEMA,
        "date": started,
        "device": {"type": device.type, "name": name, "cpus": os.cpu_count()},
        "load_average": [load_before, load_average()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": config,
        "analytic_saving_bytes": analytic,
        "peak_bf16_flops": peak,
        "runs": runs,
        "comparisons": [
            compare(runs[i : i + 2], analytic) for i in range(0, len(runs), 2)
        ],
    }
    result["goals"] = goals(result)
    return result


def output_path(result: dict[str, Any], folder: Path) -> Path:
    """``train_step-<device type>-<device name>-<UTC date and time>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", result["device"]["name"].lower()).strip("-")
    stamp = result["date"][:19].replace(":", "")
    return folder / f"train_step-{result['device']['type']}-{slug}-{stamp}.json"


def report(result: dict[str, Any]) -> str:
    """A plain-text table of one result, for the terminal."""
    c = result["config"]
    lines = [
        f"{result['device']['name']} ({result['device']['type']}), "
        f"torch {result['torch']}, {result['date']}",
        f"shape {c['shape']}: V={c['vocab_size']} d={c['d_model']} L={c['n_layer']} "
        f"H={c['n_head']} T={c['context']} batch={c['batch']}, "
        f"autocast {c['autocast']}",
        f"{'mode':>9} {'model':>7} {'step ms':>9} {'tokens/s':>10} "
        f"{'memory MiB':>11} {'MFU':>6}",
    ]
    for r in result["runs"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(
            f"{'compiled' if r['compiled'] else 'eager':>9} "
            f"{'tied' if r['tied'] else 'untied':>7} {r['step_ms']:9.2f} "
            f"{r['tokens_per_s']:10.0f} {r['memory_bytes'] / 2**20:11.2f} {mfu:>6}"
        )
    analytic = result["analytic_saving_bytes"]
    lines.append(f"16·V·d = {analytic / 2**20:.2f} MiB")
    for g in result["goals"]:
        verdict = {True: "met", False: "MISSED", None: "open"}[g["met"]]
        value = "" if g["value"] is None else f" = {g['value']:.4f}"
        lines.append(f"goal {g['goal']}{value}: {verdict} ({g['note']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke test")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="also measure torch.compile (auto: on CUDA only)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's bf16 dense peak, for MFU on a device not in the table",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"folder for the JSON ({RESULTS})"
    )
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    shape_name = "tiny" if args.tiny else ("gpu" if device.type == "cuda" else "cpu")
    compile_ = args.compile == "on" or (
        args.compile == "auto" and device.type == "cuda"
    )
    if args.peak_tflops is not None:
        peak: float | None = args.peak_tflops * 1e12
    else:
        peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    result = benchmark(shape_name, device, compile_, peak)
    print(report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = output_path(result, args.out)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
