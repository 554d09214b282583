"""``weightshare check`` refuses (exit 2) exactly the files safetensors refuses.

Valid safetensors files are written by hand (random names, dtypes, shapes and
bytes), then damaged by seeded random edits: header bytes, the header length, a
tensor's offsets, dtype or shape, truncation, trailing bytes, JSON that is not an
object, repeated keys, huge header sizes. For every file the truth is whether
``safetensors.safe_open`` raises; the command must exit 2 exactly then, print no
traceback and answer in well under a second. A few hundred cases run in
``make check``; the slow suite runs thousands.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open

from weightshare._checkpoint._cli import main
from weightshare._checkpoint._safetensors import DTYPES

FAST_CASES = 300
SLOW_CASES = 4000
NAMES = ["emb.weight", "head.weight", "a", "b.bias", "layers.0.w", "é"]


def valid(rng: random.Random) -> tuple[dict[str, object], bytes]:
    """A valid header (as a dict) and its data, laid out as safetensors does."""
    header: dict[str, object] = {}
    if rng.random() < 0.5:
        header["__metadata__"] = {"format": "pt"}
    data = b""
    for name in rng.sample(NAMES, rng.randint(1, 4)):
        code = rng.choice(list(DTYPES))
        bits = DTYPES[code][1]
        shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 3))]
        elements = 1
        for size in shape:
            elements *= size
        if elements * bits % 8:
            shape, elements = [*shape, 8], elements * 8
        nbytes = elements * bits // 8
        header[name] = {
            "dtype": code,
            "shape": shape,
            "data_offsets": [len(data), len(data) + nbytes],
        }
        data += rng.randbytes(nbytes)
    return header, data


def encode(header: dict[str, object] | bytes, data: bytes, pad: int = 0) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * pad
    return len(raw).to_bytes(8, "little") + raw + data


def _tensors(header: dict[str, object]) -> list[dict[str, object]]:
    return [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]


def _edit_entry(rng: random.Random, header: dict[str, object]) -> None:
    entries = _tensors(header)
    if not entries:
        header["x"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        return
    entry = rng.choice(entries)
    field = rng.choice(["dtype", "shape", "data_offsets", "drop", "extra"])
    if field == "dtype":
        entry["dtype"] = rng.choice([*DTYPES, "X9", "f32", 7, None])
    elif field == "shape":
        entry["shape"] = rng.choice(
            [[], [0], [1 << 64], [-1], [2.0], "3", [True], [3, 5], [1 << 62, 8]]
        )
    elif field == "data_offsets":
        offsets = list(entry["data_offsets"])  # type: ignore[call-overload]
        index = rng.randrange(2)
        offsets[index] = max(0, offsets[index] + rng.choice([-3, -1, 1, 2, 8]))
        entry["data_offsets"] = rng.choice([offsets, offsets[:1], [*offsets, 0]])
    elif field == "drop":
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    else:
        entry["note"] = rng.choice([1, "x", [1, 2], {"a": 1}])


def damaged(rng: random.Random) -> bytes:
    """One valid file with one or two random edits."""
    header, data = valid(rng)
    edits: list[Callable[[], bytes]] = []

    def structured() -> bytes:
        _edit_entry(rng, header)
        return encode(header, data)

    def metadata() -> bytes:
        header["__metadata__"] = rng.choice(
            [
                {"k": 1},
                [1],
                None,
                "x",
                {"k": {"a": "b"}},
                {"weightshare.shared_groups": "{"},
            ]
        )
        return encode(header, data)

    def raw_text(text: bytes) -> bytes:
        return encode(text, data)

    def flip() -> bytes:
        blob = bytearray(encode(header, data))
        for _ in range(rng.randint(1, 3)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        return bytes(blob)

    def length() -> bytes:
        blob = bytearray(encode(header, data))
        value = int.from_bytes(blob[:8], "little")
        value = rng.choice(
            [value + rng.randint(-9, 9), 0, 1 << 63, 100_000_001, len(blob) - 8]
        )
        blob[:8] = max(0, value).to_bytes(8, "little")
        return bytes(blob)

    def truncate() -> bytes:
        blob = encode(header, data)
        return blob[: rng.randrange(len(blob))]

    def trailing() -> bytes:
        return encode(header, data) + rng.randbytes(rng.randint(1, 9))

    def padded() -> bytes:  # spaces after the JSON: valid, as save_file pads
        return encode(header, data, pad=rng.randint(1, 7))

    def repeated() -> bytes:
        text = json.dumps(header)
        key = rng.choice([k for k in header] + ["__metadata__"])
        value = json.dumps(header.get(key, {}))
        return raw_text(("{" + f'"{key}": {value}, ' + text[1:]).encode())

    def not_object() -> bytes:
        return raw_text(rng.choice([b"[]", b"1", b'"x"', b"null", b"", b"{", b"{}x"]))

    def constant() -> bytes:
        return raw_text(json.dumps(header).replace("0", "NaN", 1).encode())

    def surrogate() -> bytes:
        return raw_text(
            b'{"\\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'
        )

    def gap() -> bytes:
        entries = _tensors(header)
        for entry in entries:
            low, high = entry["data_offsets"]  # type: ignore[misc]
            entry["data_offsets"] = [low + 1, high + 1]
        return encode(header, b"\0" + data)

    edits = [structured, metadata, flip, length, truncate, trailing, padded]
    edits += [repeated, not_object, constant, surrogate, gap]
    return rng.choice(edits)()


def refused_by_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except Exception:
        return True
    return False


def run_cases(
    tmp_path: Path, seed: int, count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "fuzz.safetensors"
    disagree = []
    slowest = 0.0
    for case in range(count):
        path.write_bytes(damaged(rng))
        refused = refused_by_safetensors(path)
        start = time.perf_counter()
        status = main(["check", str(path), "--no-transformers"])
        slowest = max(slowest, time.perf_counter() - start)
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err, (case, err)
        if (status == 2) != refused:
            disagree.append((case, status, refused, err.strip()[-200:]))
    assert not disagree, disagree[:5]
    assert slowest < 0.5, slowest


def test_check_refuses_exactly_what_safetensors_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cases(tmp_path, 0, FAST_CASES, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 5))
def test_check_refuses_exactly_what_safetensors_refuses_thousands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    run_cases(tmp_path, seed, SLOW_CASES // 4, capsys)


def test_the_fuzzed_files_include_both_verdicts(tmp_path: Path) -> None:
    rng = random.Random(0)
    path = tmp_path / "f.safetensors"
    verdicts = set()
    for _ in range(60):
        path.write_bytes(damaged(rng))
        verdicts.add(refused_by_safetensors(path))
    assert verdicts == {True, False}


def test_the_command_line_prints_one_line_never_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.safetensors"
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}
    header["b"] = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}  # overlap
    path.write_bytes(encode(header, bytes(4)))
    result = subprocess.run(
        [sys.executable, "-m", "weightshare", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "invalid data_offsets for 'b' (it overlaps the tensor before it)" in (
        result.stderr
    )
