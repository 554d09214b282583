"""Read ONNX models for :func:`weightshare.check` (internal).

The file is read by the ``onnx`` package itself, so :func:`weightshare.check`
refuses exactly what onnx refuses: ``onnx.load`` (with the external data files
beside the model), ``onnx.checker.check_model`` on the path, and
``onnx.numpy_helper.to_array`` on every initializer. onnx is imported here only,
when an ONNX file is checked. The whole model, external data included, is held in
memory while it is checked (as ``onnx.load`` holds it).

Besides identical initializers, exporters store a matrix a second time
*transposed*: the TorchScript exporter of torch 2.13 (``dynamo=False``) folds the
transpose that a tied output layer applies to the embedding into a constant
(pytorch/pytorch#108342). :func:`transposed_pairs` finds such pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._contents import Entry
from ._format import Unreadable, one_line

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MemoryTensors", "read_onnx", "transposed_pairs"]

SAMPLE = 4096
# ONNX element types whose names differ from torch's
NAMES = {"float": "float32", "double": "float64", "float8e4m3fn": "float8_e4m3fn"}
FOUR_BITS = ("int4", "uint4", "float4e2m1")


def need(package: str, pin: str) -> Any:
    """Import an optional package, or say in one line what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise Unreadable(
            f"checking this file needs the {package!r} package, which is not "
            f"installed ({one_line(err)}); install it: pip install {pin}"
        ) from err


def read_onnx(path: Path) -> tuple[dict[str, Entry], MemoryTensors]:
    """The initializers of an ONNX model, validated by onnx, and their bytes."""
    onnx = need("onnx", "onnx")
    numpy_helper = need("onnx.numpy_helper", "onnx")
    helper = need("onnx.external_data_helper", "onnx")
    try:
        # onnx.load, in its two steps, to see which file holds each initializer
        model = onnx.load(str(path), load_external_data=False)
        where = {tensor.name: _location(tensor) for tensor in model.graph.initializer}
        helper.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(str(path))
    except Exception as err:  # onnx raises DecodeError, ValidationError, OSError...
        raise Unreadable(f"onnx refuses it: {one_line(err)}") from err
    entries: dict[str, Entry] = {}
    arrays: dict[str, bytes] = {}
    for tensor in model.graph.initializer:
        try:
            array = numpy_helper.to_array(tensor)
        except Exception as err:
            raise Unreadable(
                f"onnx cannot read initializer {tensor.name!r}: {one_line(err)}"
            ) from err
        if tensor.name in entries:
            raise Unreadable(f"initializer {tensor.name!r} appears twice")
        code = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        dtype = NAMES.get(code, code)
        bits = 4 if code in FOUR_BITS else array.dtype.itemsize * 8
        data = tensor.raw_data or array.tobytes()
        shape = tuple(int(d) for d in tensor.dims)
        file = where.get(tensor.name) or path.name
        entries[tensor.name] = Entry(tensor.name, dtype, shape, len(data), file, bits)
        arrays[tensor.name] = data
    return entries, MemoryTensors(arrays, entries)


def _location(tensor: Any) -> str:
    """The external data file of an initializer ("" when stored in the model)."""
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def transposed_pairs(entries: dict[str, Entry], data: MemoryTensors) -> list[list[str]]:
    """Pairs of 2-D tensors ``[a, b]`` and ``[b, a]``, one the other's transpose.

    Square matrices are left out (a symmetric one is its own transpose), and so
    are sub-byte types.
    """
    found: list[list[str]] = []
    by_shape: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for name, entry in entries.items():
        if len(entry.shape) == 2 and entry.bits % 8 == 0 and entry.nbytes:
            by_shape.setdefault((entry.dtype, entry.shape), []).append(name)
    for (dtype, (rows, cols)), names in by_shape.items():
        if rows >= cols:
            continue  # each pair once, from its wide side
        for name in names:
            flipped = data.transposed(name)
            for other in by_shape.get((dtype, (cols, rows)), []):
                if flipped is not None and data.raw(other) == flipped:
                    found.append([other, name])
    return found


class MemoryTensors:
    """Tensor bytes held in memory (the :class:`._contents.Data` protocol)."""

    def __init__(self, arrays: dict[str, bytes], entries: dict[str, Entry]) -> None:
        self._arrays = arrays
        self._entries = entries

    def raw(self, name: str) -> bytes:
        return self._arrays[name]

    def sample(self, name: str) -> bytes:
        raw = self._arrays[name]
        return raw[:SAMPLE] + raw[-SAMPLE:]

    def equal(self, a: str, b: str) -> bool:
        return self._arrays[a] == self._arrays[b]

    def constant(self, name: str) -> bool:
        raw = self._arrays[name]
        width = max(1, self._entries[name].bits // 8)
        return raw == raw[:width] * (len(raw) // width) if raw else True

    def _numbers(self, name: str) -> np.ndarray[Any, Any] | None:
        import numpy as np

        entry = self._entries[name]
        try:
            return np.frombuffer(self._arrays[name], dtype=np.dtype(entry.dtype))
        except (TypeError, ValueError):
            return None  # bfloat16, float8 and the like: no NumPy type here

    def transposed(self, name: str) -> bytes | None:
        import numpy as np

        entry = self._entries[name]
        rows, cols = entry.shape
        width = entry.bits // 8
        raw = self._arrays[name]
        if len(raw) != rows * cols * width:
            return None
        items = np.frombuffer(raw, dtype=np.dtype((np.void, width)))
        return items.reshape(rows, cols).T.tobytes()

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        left, right = self._numbers(a), self._numbers(b)
        if left is None or right is None or left.shape != right.shape:
            return None, None
        differ = left != right
        gap = abs(left[differ].astype("float64") - right[differ].astype("float64"))
        return (float(gap.max()) if gap.size else None), int(differ.sum())

    def loads_equal(self, a: str, b: str, dtype: str) -> bool:
        return self.equal(a, b)

    def close(self) -> None:
        self._arrays = {}
