"""Read checkpoints for :func:`weightshare.check` without loading them (internal).

A safetensors file is read through its header (an 8-byte little-endian length, then
JSON) and its tensor data through ``mmap``, a chunk at a time, so neither torch nor
the whole file is loaded. A torch checkpoint is opened with
``torch.load(weights_only=True, mmap=True)``, which keeps its storage sharing.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ._format import GROUPS_KEY, parse_groups

if TYPE_CHECKING:
    import torch

__all__ = [
    "Contents",
    "Data",
    "Entry",
    "MappedFiles",
    "TorchTensors",
    "Unreadable",
    "read_safetensors",
    "read_torch",
]

CHUNK = 4 << 20  # bytes compared at a time; a multiple of 8 and of the page size
SAMPLE = 4096  # bytes read from each end of a candidate before comparing it all
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# safetensors dtype code -> (name shown, bits per element). Names follow torch where
# torch has the type; the sub-byte types keep their safetensors code.
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 8),
    "U8": ("uint8", 8),
    "I8": ("int8", 8),
    "F8_E5M2": ("float8_e5m2", 8),
    "F8_E4M3": ("float8_e4m3fn", 8),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8),
    "F8_E8M0": ("float8_e8m0fnu", 8),
    "I16": ("int16", 16),
    "U16": ("uint16", 16),
    "F16": ("float16", 16),
    "BF16": ("bfloat16", 16),
    "I32": ("int32", 32),
    "U32": ("uint32", 32),
    "F32": ("float32", 32),
    "I64": ("int64", 64),
    "U64": ("uint64", 64),
    "F64": ("float64", 64),
    "C64": ("complex64", 64),
    "F4": ("f4", 4),
    "F6_E2M3": ("f6_e2m3", 6),
    "F6_E3M2": ("f6_e3m2", 6),
}


class Unreadable(Exception):
    """The input cannot be read; ``str(err)`` says why, on one line."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint: what the header (or torch) says about it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str
    bits: int  # per element; 0 when unknown


class Data(Protocol):
    """Byte-level access to the tensors of one checkpoint."""

    def sample(self, name: str) -> bytes:
        """The first and last :data:`SAMPLE` bytes of a tensor."""

    def equal(self, a: str, b: str) -> bool:
        """Whether two tensors hold the same bytes."""

    def constant(self, name: str) -> bool:
        """Whether every element of a tensor has the same bytes (e.g. all ones)."""

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        """Max absolute difference and number of differing elements (or None)."""

    def close(self) -> None:
        """Release the files."""


@dataclass
class Contents:
    """Everything :func:`weightshare.check` needs from the input."""

    kind: str  # "safetensors", "torch" or "huggingface"
    files: list[str]
    entries: dict[str, Entry]
    recorded: list[list[str]]  # groups in weightshare metadata
    aliases: list[list[str]]  # torch: names that are one tensor (one storage, view)
    views: list[list[str]]  # torch: names that are different views of one storage
    stored_bytes: int
    data: Data


def one_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it is empty."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float | None, int | None]:
    """Max ``|a - b|`` over the elements whose bytes differ, and their number.

    ``a`` and ``b`` are 1-D, of one dtype. The maximum leaves out NaN gaps and is
    None where the dtype cannot be converted to float64 or complex128.
    """
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    size = a.element_size()
    differ = a.view(ints[size]) != b.view(ints[size]) if size in ints else a != b
    count = int(differ.sum())
    try:
        x, y = a[differ], b[differ]
        wide = torch.complex128 if x.is_complex() else torch.float64
        gap = (x.to(wide) - y.to(wide)).abs()
    except (RuntimeError, TypeError):
        return None, count
    gap = gap[~gap.isnan()]
    return (float(gap.max()) if gap.numel() else None), count


def _larger(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


# --- safetensors ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    path: Path
    start: int  # absolute offsets in the file
    end: int
    entry: Entry

    @property
    def period(self) -> int:
        """Bytes of one element (1 for sub-byte and unknown types)."""
        return max(1, self.entry.bits // 8)


class MappedFiles:
    """Tensor data of safetensors files, memory-mapped and read in chunks.

    Pages are released after each chunk (``madvise(MADV_DONTNEED)``), so the
    resident memory stays near one chunk however big the tensors are.
    """

    def __init__(self) -> None:
        self._spans: dict[str, _Span] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def add(self, name: str, span: _Span) -> None:
        self._spans[name] = span

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as handle:
                self._maps[path] = mmap.mmap(
                    handle.fileno(), 0, access=mmap.ACCESS_READ
                )
        return self._maps[path]

    def _chunks(self, name: str) -> Generator[memoryview, None, None]:
        span = self._spans[name]
        mapped = self._map(span.path)
        with memoryview(mapped) as whole:
            for low in range(span.start, span.end, CHUNK):
                high = min(low + CHUNK, span.end)
                with whole[low:high] as part:
                    yield part
                _release(mapped, low, high)

    def sample(self, name: str) -> bytes:
        span = self._spans[name]
        with memoryview(self._map(span.path)) as whole:
            head = bytes(whole[span.start : min(span.start + SAMPLE, span.end)])
            tail = bytes(whole[max(span.end - SAMPLE, span.start) : span.end])
        return head + tail

    def equal(self, a: str, b: str) -> bool:
        with closing(self._chunks(a)) as left, closing(self._chunks(b)) as right:
            return all(_same(x, y) for x, y in zip(left, right, strict=True))

    def constant(self, name: str) -> bool:
        span = self._spans[name]
        with memoryview(self._map(span.path)) as whole:
            first = bytes(whole[span.start : span.start + span.period])
        pattern = memoryview(first * (CHUNK // span.period))
        with closing(self._chunks(name)) as chunks:
            return all(_same(part, pattern[: len(part)]) for part in chunks)

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        import torch

        entry = self._spans[a].entry
        # sub-byte types, and types this torch lacks, have no maximum difference
        dtype = getattr(torch, entry.dtype, None) if entry.bits >= 8 else None
        if not isinstance(dtype, torch.dtype):
            return None, None
        worst: float | None = None
        total = 0
        with closing(self._chunks(a)) as left, closing(self._chunks(b)) as right:
            for x, y in zip(left, right, strict=True):
                # bytearray: a writable copy of one chunk, as torch.frombuffer wants
                most, count = compare(
                    torch.frombuffer(bytearray(x), dtype=dtype),
                    torch.frombuffer(bytearray(y), dtype=dtype),
                )
                worst, total = _larger(worst, most), total + (count or 0)
        return worst, total

    def close(self) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()


def _release(mapped: mmap.mmap, low: int, high: int) -> None:
    """Drop the pages of ``[low, high)`` from this process (they stay cached).

    Where there is no ``madvise`` (Windows), the pages stay until the file closes.
    """
    if _DONTNEED is None:  # pragma: no cover - Windows
        return
    start = low - low % mmap.PAGESIZE
    mapped.madvise(_DONTNEED, start, high - start)


_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)


def _same(a: memoryview, b: memoryview) -> bool:
    """Byte equality of two views of one length, 8 bytes at a time.

    With NumPy (PyTorch's usual companion) the 8-byte words are compared by a
    vectorised loop, about twice as fast as a memoryview comparison, which goes item
    by item (8-byte items are still 8 times faster than bytes).
    """
    wide = len(a) - len(a) % 8
    if wide and _np is not None:
        left = _np.frombuffer(a[:wide], dtype=_np.uint64)
        right = _np.frombuffer(b[:wide], dtype=_np.uint64)
        if not _np.array_equal(left, right):
            return False
    elif wide and a[:wide].cast("Q") != b[:wide].cast("Q"):
        return False
    return a[wide:] == b[wide:]


try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with most torch installs
    _np = None  # type: ignore[assignment]


def read_safetensors(
    path: Path, label: str, data: MappedFiles
) -> tuple[dict[str, Entry], list[list[str]]]:
    """The tensors of one safetensors file (validated) and its recorded groups.

    ``label`` is the name given to the file in the report.
    """
    size = path.stat().st_size
    if size < 8:
        raise Unreadable(
            f"only {size} bytes: too short for a safetensors file (8 bytes of "
            "header length, then a JSON header); the file is truncated"
        )
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > size - 8:
            raise Unreadable(
                f"the header length says {length:,} bytes but only {size - 8:,} "
                "follow: the file is truncated, or it is not a safetensors file"
            )
        if length > MAX_HEADER:
            raise Unreadable(
                f"corrupt header: its length, {length:,} bytes, is "
                "over safetensors' limit of 100 MB"
            )
        header = _header(handle.read(length))
    metadata = header.pop("__metadata__", None)
    spans = [
        _span(path, 8 + length, name, value, label) for name, value in header.items()
    ]
    _check_end(spans, size)
    spans.sort(key=lambda span: span.start)  # file order
    for span in spans:
        data.add(span.entry.name, span)
    return {span.entry.name: span.entry for span in spans}, _recorded(metadata)


def _header(raw: bytes) -> dict[str, object]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Unreadable(f"corrupt header: it is not JSON ({one_line(err)})") from err
    if not isinstance(header, dict):
        raise Unreadable("corrupt header: it is not a JSON object")
    return header


def _span(path: Path, start: int, name: str, value: object, label: str) -> _Span:
    """One header entry, checked: dtype, shape, and offsets that fit them."""
    if not isinstance(value, dict) or not isinstance(value.get("dtype"), str):
        raise Unreadable(f"corrupt header: entry {name!r} has no dtype")
    shape, offsets = value.get("shape"), value.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and n >= 0 for n in shape
    ):
        raise Unreadable(f"corrupt header: entry {name!r} has no valid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise Unreadable(f"corrupt header: entry {name!r} has no valid data_offsets")
    dtype, bits = DTYPES.get(value["dtype"], (value["dtype"].lower(), 0))
    stored = offsets[1] - offsets[0]
    nbytes = (math.prod(shape) * bits + 7) // 8 if bits else stored
    if nbytes != stored:
        raise Unreadable(
            f"corrupt header: {name!r} is {dtype} {shape}, {nbytes:,} bytes, "
            f"but its data_offsets span {stored:,} bytes"
        )
    entry = Entry(name, dtype, tuple(shape), nbytes, label, bits)
    return _Span(path, start + offsets[0], start + offsets[1], entry)


def _check_end(spans: list[_Span], size: int) -> None:
    """The file must hold every tensor's bytes."""
    if not spans:
        return
    last = max(spans, key=lambda span: span.end)
    if last.end > size:
        raise Unreadable(
            f"truncated: tensor {last.entry.name!r} ends at byte {last.end:,} but "
            f"the file has only {size:,} bytes"
        )


def _recorded(metadata: object) -> list[list[str]]:
    if not isinstance(metadata, dict) or GROUPS_KEY not in metadata:
        return []
    try:
        return parse_groups(json.loads(metadata[GROUPS_KEY]))
    except (TypeError, ValueError) as err:
        raise Unreadable(f"corrupt metadata: {one_line(err)}") from err


# --- torch ----------------------------------------------------------------------------


class TorchTensors:
    """Byte-level access to the tensors of a torch checkpoint (memory-mapped)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def _flat(self, name: str) -> torch.Tensor:
        return self.tensors[name].detach().contiguous().reshape(-1)

    def _bytes(self, name: str) -> torch.Tensor:
        import torch

        return self._flat(name).view(torch.uint8)

    def sample(self, name: str) -> bytes:
        raw = self._bytes(name)
        return bytes(raw[:SAMPLE].tolist() + raw[-SAMPLE:].tolist())

    def equal(self, a: str, b: str) -> bool:
        import torch

        return torch.equal(self._bytes(a), self._bytes(b))

    def constant(self, name: str) -> bool:
        rows = self._bytes(name).view(-1, self.tensors[name].element_size())
        return bool((rows == rows[0]).all())

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        return compare(self._flat(a), self._flat(b))

    def close(self) -> None:
        self.tensors = {}


def read_torch(
    path: Path, label: str
) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """All tensors of a ``torch.save`` file, by dotted name, and recorded groups."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise Unreadable("the file is empty")
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise Unreadable(
            "not a torch checkpoint: it is neither a zip archive (torch.save) nor a "
            "pickle (legacy torch.save)"
        )
    import torch

    from ._checkpoint import _from_torch

    try:
        obj = torch.load(
            path, map_location="cpu", weights_only=True, mmap=magic == b"PK\x03\x04"
        )
    except Exception as err:  # torch.load raises many types for a damaged file
        raise Unreadable(
            f"torch.load(weights_only=True) failed: {_sentence(err)}; the file may be "
            "truncated or corrupt"
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and "shared_groups" in obj:
        try:
            return _from_torch(obj)
        except ValueError as err:
            raise Unreadable(
                f"corrupt weightshare checkpoint: {one_line(err)}"
            ) from err
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, "", tensors)
    return tensors, []


def _sentence(err: BaseException) -> str:
    """The first sentence of an error's first line."""
    return one_line(err).split(". ")[0].rstrip(".")


def _flatten(obj: object, prefix: str, out: dict[str, torch.Tensor]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix or "<tensor>"] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}", out)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _flatten(value, f"{prefix}.{index}" if prefix else str(index), out)


def torch_contents(
    tensors: dict[str, torch.Tensor], label: str
) -> tuple[dict[str, Entry], list[list[str]], list[list[str]], int]:
    """Entries, exact aliases, differing views of one storage, and stored bytes."""
    entries: dict[str, Entry] = {}
    storages: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = Entry(
            name, dtype, tuple(tensor.shape), nbytes, label, tensor.element_size() * 8
        )
        storage = tensor.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else -id(tensor)
        storages.setdefault(key, []).append(name)
        sizes[key] = storage.nbytes()
    aliases: list[list[str]] = []
    views: list[list[str]] = []
    for names in storages.values():
        by_view: dict[tuple[object, ...], list[str]] = {}
        for name in names:
            by_view.setdefault(_view(tensors[name]), []).append(name)
        aliases += [group for group in by_view.values() if len(group) > 1]
        if len(by_view) > 1:
            views.append(names)
    return entries, aliases, views, sum(sizes.values())


def _view(tensor: torch.Tensor) -> tuple[object, ...]:
    return (tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
