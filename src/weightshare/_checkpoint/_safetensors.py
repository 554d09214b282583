"""Read safetensors files for :func:`weightshare.check` without torch (internal).

The header (an 8-byte little-endian length, then JSON) is validated by the rules
``safetensors.safe_open`` applies, so :func:`weightshare.check` refuses exactly the
files safetensors refuses: a header length past the file or over 100 MB, a header
that is not UTF-8 JSON, an entry with an unknown dtype or a shape or offsets that
are not unsigned 64-bit integers, a size that overflows, tensors whose byte ranges
overlap or leave a gap, and bytes after the last tensor. Tensor data is read
through ``mmap`` a chunk at a time (:mod:`._mapped`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ._contents import Entry
from ._format import GROUPS_KEY, Unreadable, one_line, parse_groups
from ._mapped import MappedFiles, Span

__all__ = ["DTYPES", "read_safetensors"]

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
U64 = 1 << 64
METADATA = "__metadata__"
FIELDS = ("dtype", "shape", "data_offsets")

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


class _Object(dict[str, object]):
    """A JSON object that remembers which of its keys came more than once."""

    duplicates: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, object]]) -> _Object:
    found = _Object(pairs)  # the last value of a repeated key wins, as in serde
    if len(found) != len(pairs):
        keys = [key for key, _ in pairs]
        found.duplicates = frozenset(key for key in found if keys.count(key) > 1)
    return found


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_safetensors(
    path: Path, label: str, data: MappedFiles
) -> tuple[dict[str, Entry], list[list[str]] | str, dict[str, str]]:
    """The tensors of one safetensors file (validated), recorded groups and ties.

    ``label`` is the name given to the file in the report. The groups are those
    :func:`weightshare.save` records, or what is wrong with them (a string: the
    file is valid safetensors, but :func:`weightshare.load` refuses it). The ties
    are those ``safetensors.torch.save_model`` records: its metadata maps each
    dropped name to the name it kept.
    """
    size = path.stat().st_size
    if size < 8:
        raise Unreadable(
            f"only {size} bytes: too short for a safetensors file (8 bytes of "
            "header length, then a JSON header); the file is truncated"
        )
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_HEADER:
            raise Unreadable(
                f"corrupt header: its length, {length:,} bytes, is over safetensors' "
                "limit of 100 MB"
            )
        if length > size - 8:
            raise Unreadable(
                f"the header length says {length:,} bytes but only {size - 8:,} "
                "follow: the file is truncated, or it is not a safetensors file"
            )
        header = _header(handle.read(length))
    metadata = _metadata(header.pop(METADATA, None), METADATA in header.duplicates)
    spans = [
        _span(path, 8 + length, name, value, label) for name, value in header.items()
    ]
    spans.sort(key=lambda span: (span.start, span.end))  # file order
    _check_coverage(spans, 8 + length, size)
    for span in spans:
        data.add(span.entry.name, span)
    entries = {span.entry.name: span.entry for span in spans}
    return entries, _recorded(metadata), _dropped(metadata, entries)


def _header(raw: bytes) -> _Object:
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant
        )
    except UnicodeDecodeError as err:
        raise Unreadable(f"corrupt header: it is not UTF-8 ({one_line(err)})") from err
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        raise Unreadable(f"corrupt header: it is not JSON ({one_line(err)})") from err
    if not isinstance(header, _Object):
        raise Unreadable("corrupt header: it is not a JSON object")
    _utf8(header)
    return header


def _utf8(value: object) -> None:
    """Refuse lone surrogates (``"\\ud800"``): Python's JSON takes them, Rust's not."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise Unreadable(f"corrupt header: {one_line(err)}") from err
    elif isinstance(value, dict):
        for key, item in value.items():
            _utf8(key)
            _utf8(item)
    elif isinstance(value, list):
        for item in value:
            _utf8(item)


def _metadata(value: object, repeated: bool) -> dict[str, str]:
    if repeated:
        raise Unreadable(f"corrupt header: {METADATA!r} appears twice")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(item, str) for item in value.values()
    ):
        raise Unreadable(
            f"corrupt header: {METADATA!r} is not an object of strings to strings"
        )
    return value


def _u64(value: object) -> bool:
    return type(value) is int and 0 <= value < U64


def _span(path: Path, start: int, name: str, value: object, label: str) -> Span:
    """One header entry, checked: dtype, shape, and offsets that fit them."""
    if not isinstance(value, _Object):
        raise Unreadable(f"corrupt header: entry {name!r} is not an object")
    if value.duplicates & set(FIELDS):
        raise Unreadable(f"corrupt header: entry {name!r} repeats a field")
    code, shape, offsets = (value.get(key) for key in FIELDS)
    if not isinstance(code, str) or code not in DTYPES:
        raise Unreadable(
            f"corrupt header: entry {name!r} has no known dtype ({code!r})"
        )
    if not isinstance(shape, list) or not all(map(_u64, shape)):
        raise Unreadable(f"corrupt header: entry {name!r} has no valid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(map(_u64, offsets))
    ):
        raise Unreadable(f"corrupt header: entry {name!r} has no valid data_offsets")
    dtype, bits = DTYPES[code]
    elements = math.prod(shape)
    if elements >= U64 or elements * bits >= U64:
        raise Unreadable(f"corrupt header: the size of {name!r} overflows 64 bits")
    if elements * bits % 8:
        raise Unreadable(
            f"corrupt header: {name!r} is {dtype} {shape}, which is not a whole "
            "number of bytes"
        )
    nbytes = elements * bits // 8
    low, high = offsets
    if high >= low and high - low != nbytes:
        raise Unreadable(
            f"corrupt header: {name!r} is {dtype} {shape}, {nbytes:,} bytes, but its "
            f"data_offsets span {high - low:,} bytes"
        )
    entry = Entry(name, dtype, tuple(shape), nbytes, label, bits)
    return Span(path, start + low, start + high, entry)


def _check_coverage(spans: list[Span], base: int, size: int) -> None:
    """Tensors must tile the data: no overlap, no gap, nothing after the last."""
    end = base
    for span in spans:
        if span.start != end or span.end < span.start:
            what = (
                "overlaps the tensor before it" if span.start < end else "leaves a gap"
            )
            if span.end < span.start:
                what = "ends before it starts"
            raise Unreadable(
                f"corrupt header: invalid data_offsets for {span.entry.name!r} "
                f"(it {what}); safetensors refuses such a file"
            )
        end = span.end
    if end > size:
        last = spans[-1].entry.name
        raise Unreadable(
            f"truncated: tensor {last!r} ends at byte {end:,} but the file has only "
            f"{size:,} bytes"
        )
    if end < size:
        raise Unreadable(
            f"{size - end:,} bytes after the last tensor: the header does not cover "
            "the file (safetensors refuses it: file not fully covered)"
        )


def _recorded(metadata: dict[str, str]) -> list[list[str]] | str:
    if GROUPS_KEY not in metadata:
        return []
    try:
        return parse_groups(json.loads(metadata[GROUPS_KEY]))
    except (TypeError, ValueError, RecursionError) as err:
        return f"its {GROUPS_KEY!r} metadata is not valid ({one_line(err)})"


def _dropped(metadata: dict[str, str], entries: dict[str, Entry]) -> dict[str, str]:
    """``safetensors.torch.save_model``'s record: dropped name -> kept name."""
    return {
        gone: kept
        for gone, kept in metadata.items()
        if kept in entries and gone != kept and gone != GROUPS_KEY
    }
