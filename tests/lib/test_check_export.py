"""``weightshare check`` on exported files: ONNX models and GGUF files.

The files are written here: ONNX graphs built with ``onnx.helper`` (fast), a tiny
tied GPT exported both ways with ``torch.onnx.export`` (slow), and GGUF files
written with ``gguf.GGUFWriter``. Damaged copies (seeded random edits) must exit
2 exactly when the format's own reader refuses them (onnx's loader, checker and
``to_array``; gguf's ``GGUFReader``), with one line on stderr and no traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import weightshare as ws  # noqa: E402
from weightshare._checkpoint._cli import main  # noqa: E402

V, D = 40, 8
FUZZ_CASES = 60
SLOW_CASES = 1000


def onnx_model(
    path: Path, inits: dict[str, np.ndarray], external: bool = False
) -> Path:
    """A graph that adds every initializer's sum to its input, so all are used."""
    nodes, outputs = [], []
    for number, name in enumerate(inits):
        out = f"s{number}"
        nodes.append(helper.make_node("ReduceSum", [name], [out], keepdims=0))
        outputs.append(out)
    total = helper.make_node("Sum", outputs, ["y"])
    graph = helper.make_graph(
        [*nodes, total],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(array, name) for name, array in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    if external:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((V, D)).astype(np.float32),
        rng.standard_normal((D, D)).astype(np.float32),
    )


def run(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object]]:
    status = main(["check", str(path), "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_onnx_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb, w = weights()
    path = onnx_model(tmp_path / "m.onnx", {"wte.weight": emb, "w": w})
    status, doc = run(path, capsys)
    assert status == 0
    [report] = doc["reports"]  # type: ignore[misc]
    assert report["kind"] == "onnx" and report["stored_bytes"] == (V * D + D * D) * 4


@pytest.mark.parametrize("external", [False, True])
def test_onnx_duplicate_and_transposed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], external: bool
) -> None:
    emb, w = weights()
    inits = {"wte.weight": emb, "copy": emb.copy(), "folded": emb.T.copy(), "w": w}
    path = onnx_model(tmp_path / "m.onnx", inits, external)
    status, doc = run(path, capsys)
    assert status == 1
    [report] = doc["reports"]  # type: ignore[misc]
    found = {(f["kind"], tuple(f["names"]), f["bytes"]) for f in report["findings"]}
    assert found == {
        ("duplicate", ("wte.weight", "copy"), V * D * 4),
        ("transposed", ("wte.weight", "folded"), V * D * 4),
        ("transposed", ("copy", "folded"), V * D * 4),
    }
    assert report["files"] == ["m.onnx", "m.onnx.data"] if external else ["m.onnx"]


def test_onnx_not_transposed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, _ = weights()
    other = emb.T.copy()
    other[0, 0] += 1.0  # one element differs: not the transpose
    path = onnx_model(tmp_path / "m.onnx", {"wte.weight": emb, "w": other})
    assert run(path, capsys)[0] == 0


def gguf_file(
    path: Path, arch: str, tensors: dict[str, np.ndarray], write_arch: bool = True
) -> Path:
    writer = gguf.GGUFWriter(str(path), arch if write_arch else "llama")
    if not write_arch:  # GGUFWriter always writes one; drop it to test the absence
        writer.kv_data[0].pop("general.architecture")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "output", "kinds"),
    [
        ("llama", "none", []),
        ("llama", "copy", ["duplicate"]),
        ("llama", "own", []),
        ("qwen2", "copy", ["duplicate"]),
        ("rwkv7", "none", ["output-missing"]),
        ("rwkv7", "copy", []),  # the loader needs the copy
        ("somearch", "none", []),  # not judged
        ("somearch", "copy", ["duplicate"]),
    ],
)
def test_gguf(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arch: str,
    output: str,
    kinds: list[str],
) -> None:
    emb, w = weights()
    tensors = {"token_embd.weight": emb, "blk.0.w.weight": w}
    if output != "none":
        tensors["output.weight"] = emb.copy() if output == "copy" else weights(1)[0]
    path = gguf_file(tmp_path / "m.gguf", arch, tensors)
    status, doc = run(path, capsys)
    [report] = doc["reports"]  # type: ignore[misc]
    assert [f["kind"] for f in report["findings"]] == kinds
    assert status == (1 if kinds else 0)
    listed = {t["name"]: t["shape"] for t in report["tensors"]}
    assert listed["token_embd.weight"] == [V, D]
    if "duplicate" in kinds:
        [finding] = report["findings"]
        assert finding["names"] == ["token_embd.weight", "output.weight"]
        assert finding["bytes"] == V * D * 4
    if arch in ("llama", "qwen2"):
        assert [t["source"] for t in report["ties"]] == ["gguf"]


def test_gguf_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb, _ = weights()
    tensors = {"token_embd.weight": emb, "output.weight": emb.copy()}
    path = gguf_file(tmp_path / "m.gguf", "llama", tensors)
    assert main(["check", str(path)]) == 1
    text = capsys.readouterr().out
    assert "GGUF file (m.gguf)" in text
    assert "output.weight is an exact copy of token_embd.weight" in text
    assert "1.3 kB wasted" in text


def onnx_refuses(path: Path) -> bool:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))
        for tensor in model.graph.initializer:
            numpy_helper.to_array(tensor)
    except Exception:
        return True
    return False


def gguf_refuses(path: Path) -> bool:
    try:
        gguf.GGUFReader(str(path))
    except Exception:
        return True
    return False


def damage(raw: bytes, rng: random.Random) -> bytes:
    """One seeded random edit: flip bytes, truncate, append, or overwrite a run."""
    data = bytearray(raw)
    edit = rng.choice(["flip", "truncate", "append", "run"])
    if edit == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif edit == "truncate":
        del data[rng.randrange(len(data)) :]
    elif edit == "append":
        data += rng.randbytes(rng.randint(1, 64))
    else:
        start = rng.randrange(len(data))
        data[start : start + 8] = rng.randbytes(8)
    return bytes(data)


def test_damaged_external_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The external data file damaged (the model file intact)."""
    emb, w = weights()
    path = onnx_model(tmp_path / "m.onnx", {"wte.weight": emb, "w": w}, external=True)
    data = tmp_path / "m.onnx.data"
    raw = data.read_bytes()
    rng = random.Random(7)
    outcomes = set()
    for case in range(FUZZ_CASES // 2):
        data.write_bytes(damage(raw, rng))
        status = main(["check", str(path)])
        err = capsys.readouterr().err
        expected = onnx_refuses(path)
        assert (status == 2) == expected, (case, status, err)
        assert "Traceback" not in err and "internal error" not in err, err
        outcomes.add(expected)
    data.unlink()
    assert main(["check", str(path)]) == 2 and onnx_refuses(path)
    assert outcomes == {True, False}


@pytest.mark.parametrize(
    "cases", [FUZZ_CASES, pytest.param(SLOW_CASES, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("kind", ["onnx", "gguf"])
def test_damaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, cases: int
) -> None:
    emb, w = weights()
    if kind == "onnx":
        source = onnx_model(tmp_path / "src.onnx", {"wte.weight": emb, "w": w})
        refuses = onnx_refuses
    else:
        tensors = {"token_embd.weight": emb, "blk.0.w.weight": w}
        source = gguf_file(tmp_path / "src.gguf", "llama", tensors)
        refuses = gguf_refuses
    raw = source.read_bytes()
    rng = random.Random(23)
    refused = 0
    for case in range(cases):
        path = tmp_path / f"bad{case}.{kind}"
        path.write_bytes(damage(raw, rng))
        status = main(["check", str(path)])
        err = capsys.readouterr().err
        expected = refuses(path)
        assert (status == 2) == expected, (case, status, err)
        assert "Traceback" not in err and "internal error" not in err, err
        if expected:
            refused += 1
            assert err.count("\n") == 1 and err.startswith("weightshare check: error:")
    print(f"{kind}: {refused} of {cases} damaged files refused")
    assert 0 < refused < cases  # both outcomes were tried


def test_missing_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now fails
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install gguf" in err


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_exported_gpt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dynamo: bool
) -> None:
    """A tiny tied GPT: TorchScript stores its matrix twice (once transposed)."""
    import torch

    from weightshare.models import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=512, context=16, n_layer=1, n_head=2, d_model=64)
    model = GPT(config).eval()
    path = tmp_path / "gpt.onnx"
    torch.onnx.export(model, (torch.randint(0, 512, (1, 8)),), str(path), dynamo=dynamo)
    assert not onnx_refuses(path)
    report = ws.check(path)
    vocab = [t for t in report.tensors if 512 in t.shape and 64 in t.shape]
    if dynamo:
        assert len(vocab) == 1 and report.findings == ()
    else:
        assert sorted(t.shape for t in vocab) == [(64, 512), (512, 64)]
        [finding] = [f for f in report.findings if f.kind == "transposed"]
        assert finding.bytes == 512 * 64 * 4
        assert main(["check", str(path)]) == 1


def test_safetensors_imports_neither(tmp_path: Path) -> None:
    """Checking a safetensors file imports neither onnx nor gguf."""
    import subprocess
    import sys

    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(path))
    code = (
        "import sys; from weightshare._checkpoint._cli import main; "
        f"status = main(['check', {str(path)!r}]); "
        "print(status, sorted(m for m in ('onnx', 'gguf') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "0 []"
