"""Tensor bytes of safetensors files, memory-mapped and compared a chunk at a time.

Pages are released after each chunk (``madvise(MADV_DONTNEED)``), so the resident
memory stays near one chunk however big the tensors are. Byte comparison needs no
torch; only a difference in values (:meth:`MappedFiles.difference`,
:meth:`MappedFiles.loads_equal`) imports it.
"""

from __future__ import annotations

import mmap
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._contents import Entry

if TYPE_CHECKING:
    import torch

__all__ = ["CHUNK", "SAMPLE", "MappedFiles", "Span"]

CHUNK = 4 << 20  # bytes compared at a time; a multiple of 8 and of the page size
SAMPLE = 4096  # bytes read from each end of a candidate before comparing it all


@dataclass(frozen=True)
class Span:
    """Where one tensor's bytes lie: absolute offsets in its file."""

    path: Path
    start: int
    end: int
    entry: Entry

    @property
    def period(self) -> int:
        """Bytes of one element (1 for sub-byte types)."""
        return max(1, self.entry.bits // 8)


class MappedFiles:
    """Tensor data of safetensors files (see the module docstring)."""

    def __init__(self) -> None:
        self._spans: dict[str, Span] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def add(self, name: str, span: Span) -> None:
        self._spans[name] = span

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as handle:
                self._maps[path] = mmap.mmap(
                    handle.fileno(), 0, access=mmap.ACCESS_READ
                )
        return self._maps[path]

    def _chunks(self, name: str, size: int = 0) -> Generator[memoryview]:
        size = size or CHUNK
        span = self._spans[name]
        if span.start == span.end:
            return
        mapped = self._map(span.path)
        with memoryview(mapped) as whole:
            for low in range(span.start, span.end, size):
                high = min(low + size, span.end)
                with whole[low:high] as part:
                    yield part
                _release(mapped, low, high)

    def sample(self, name: str) -> bytes:
        span = self._spans[name]
        if span.start == span.end:
            return b""
        with memoryview(self._map(span.path)) as whole:
            head = bytes(whole[span.start : min(span.start + SAMPLE, span.end)])
            tail = bytes(whole[max(span.end - SAMPLE, span.start) : span.end])
        return head + tail

    def equal(self, a: str, b: str) -> bool:
        with closing(self._chunks(a)) as left, closing(self._chunks(b)) as right:
            return all(_same(x, y) for x, y in zip(left, right, strict=True))

    def constant(self, name: str) -> bool:
        span = self._spans[name]
        if span.start == span.end:
            return True
        with memoryview(self._map(span.path)) as whole:
            first = bytes(whole[span.start : span.start + span.period])
        pattern = memoryview(first * (CHUNK // span.period))
        with closing(self._chunks(name)) as chunks:
            return all(_same(part, pattern[: len(part)]) for part in chunks)

    def _dtype(self, name: str) -> torch.dtype | None:
        import torch

        entry = self._spans[name].entry
        # sub-byte types, and types this torch lacks, have no values to compare
        dtype = getattr(torch, entry.dtype, None) if entry.bits >= 8 else None
        return dtype if isinstance(dtype, torch.dtype) else None

    def _values(
        self, a: str, b: str
    ) -> Generator[tuple[torch.Tensor, torch.Tensor]] | None:
        """Chunks of both tensors as 1-D torch tensors of equal length (or None)."""
        import torch

        left_dtype, right_dtype = self._dtype(a), self._dtype(b)
        if left_dtype is None or right_dtype is None:
            return None
        sizes = [self._spans[name].period for name in (a, b)]
        count = CHUNK // max(sizes)  # elements per chunk

        def pairs() -> Generator[tuple[torch.Tensor, torch.Tensor]]:
            left = self._chunks(a, count * sizes[0])
            right = self._chunks(b, count * sizes[1])
            with closing(left), closing(right):
                for x, y in zip(left, right, strict=True):
                    # bytearray: a writable copy of one chunk, as frombuffer wants
                    yield (
                        torch.frombuffer(bytearray(x), dtype=left_dtype),
                        torch.frombuffer(bytearray(y), dtype=right_dtype),
                    )

        return pairs()

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        from ._torch import compare, larger

        chunks = self._values(a, b)
        if chunks is None:
            return None, None
        worst: float | None = None
        total = 0
        for x, y in chunks:
            most, count = compare(x, y)
            worst, total = larger(worst, most), total + (count or 0)
        return worst, total

    def loads_equal(self, a: str, b: str, dtype: str) -> bool:
        left, right = self._spans[a].entry, self._spans[b].entry
        if left.dtype == right.dtype == dtype and left.shape == right.shape:
            if not self.equal(a, b):
                return self._torch_equal(a, b, dtype)  # -0.0 equals +0.0
            nan = self._has_nan(a)
            if nan is not None:  # identical bytes: equal unless a NaN is there
                return not nan
        return self._torch_equal(a, b, dtype)

    def _has_nan(self, name: str) -> bool | None:
        """Whether a tensor holds a NaN, from its bits (None: not known here)."""
        dtype = self._spans[name].entry.dtype
        if not dtype.startswith(("float", "bfloat", "complex")):
            return False  # integers and bool have no NaN
        np = _numpy()
        if dtype not in _NAN_BITS or np is None:
            return None
        width, exponent, fraction = _NAN_BITS[dtype]
        for part in self._chunks(name):
            bits = np.frombuffer(part, dtype=width)
            if bool(((bits & exponent) == exponent)[(bits & fraction) != 0].any()):
                return True
        return False

    def _torch_equal(self, a: str, b: str, dtype: str) -> bool:
        import torch

        target = getattr(torch, dtype, None)
        chunks = self._values(a, b)
        if chunks is None or not isinstance(target, torch.dtype):
            return self.equal(a, b)
        return all(torch.equal(x.to(target), y.to(target)) for x, y in chunks)

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

# dtype -> (unsigned word, exponent bits, fraction bits): a NaN has every exponent bit
# set and a fraction that is not zero (complex64 is two float32 words)
_NAN_BITS = {
    "float16": ("<u2", 0x7C00, 0x03FF),
    "bfloat16": ("<u2", 0x7F80, 0x007F),
    "float32": ("<u4", 0x7F800000, 0x007FFFFF),
    "complex64": ("<u4", 0x7F800000, 0x007FFFFF),
    "float64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}


def _same(a: memoryview, b: memoryview) -> bool:
    """Byte equality of two views of one length, 8 bytes at a time.

    With NumPy (PyTorch's usual companion) the 8-byte words are compared by a
    vectorised loop, about twice as fast as a memoryview comparison, which goes item
    by item (8-byte items are still 8 times faster than bytes).
    """
    wide = len(a) - len(a) % 8
    np = _numpy() if wide else None
    if np is not None:
        left = np.frombuffer(a[:wide], dtype=np.uint64)
        right = np.frombuffer(b[:wide], dtype=np.uint64)
        if not np.array_equal(left, right):
            return False
    elif wide and a[:wide].cast("Q") != b[:wide].cast("Q"):
        return False
    return a[wide:] == b[wide:]


_UNSET: Any = object()
_np: Any = _UNSET  # numpy, None without it, or _UNSET before the first comparison


def _numpy() -> Any:
    """NumPy, imported at the first comparison, or None when it is not installed.

    Not at import: importing NumPy takes a few tenths of a second, longer than
    reading a header, and a file with nothing to compare never needs it.
    """
    global _np
    if _np is _UNSET:
        try:
            import numpy

            _np = numpy
        except ImportError:  # pragma: no cover - numpy comes with most torch installs
            _np = None
    return _np
