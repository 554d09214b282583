"""Read GGUF files (llama.cpp's format) for :func:`weightshare.check` (internal).

The file is read by the ``gguf`` package's own ``GGUFReader``, so
:func:`weightshare.check` refuses exactly the files it refuses; the package is
imported here only, when a GGUF file is checked. Tensor bytes are then compared
through ``mmap`` (:mod:`._mapped`), a chunk at a time.

A tied model stores its vocabulary matrix once, as ``token_embd.weight``, and no
``output.weight``. Whether a reader may then use the embedding as the output
layer depends on the architecture: llama.cpp's loader decides it architecture by
architecture. :data:`FALLS_BACK` and :data:`REQUIRES_OUTPUT` list the ones read in
llama.cpp's source (``src/models/*.cpp``, 2026); for any other architecture the
check does not judge a missing output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._contents import Entry
from ._format import Unreadable, one_line
from ._mapped import MappedFiles, Span
from ._onnx import need

__all__ = ["EMBEDDING", "FALLS_BACK", "OUTPUT", "REQUIRES_OUTPUT", "Gguf", "read_gguf"]

EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
# output created with TENSOR_NOT_REQUIRED, then token_embd used (TENSOR_DUPLICATED)
FALLS_BACK = frozenset({"llama", "qwen2"})
# output created as a required tensor: loading fails without it
REQUIRES_OUTPUT = frozenset({"rwkv6", "rwkv6qwen2", "rwkv7"})
# ggml types with a torch name; the others (quantized blocks) keep ggml's name
TORCH_NAMES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


@dataclass(frozen=True)
class Gguf:
    """What the rules need to know about a GGUF file beyond its tensors."""

    architecture: str  # general.architecture, "" when absent

    @property
    def ties(self) -> str:
        """``"falls back"``, ``"requires output"`` or ``"unknown"``."""
        if self.architecture in FALLS_BACK:
            return "falls back"
        if self.architecture in REQUIRES_OUTPUT:
            return "requires output"
        return "unknown"


def read_gguf(path: Path, data: MappedFiles) -> tuple[dict[str, Entry], Gguf]:
    """The tensors of a GGUF file (validated by ``GGUFReader``) and its architecture."""
    gguf = need("gguf", "gguf")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # ValueError, KeyError, IndexError, OverflowError...
        raise Unreadable(f"gguf's GGUFReader refuses it: {one_line(err)}") from err
    size = path.stat().st_size
    entries: dict[str, Entry] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        dtype = TORCH_NAMES.get(kind, kind.lower())
        elements = int(tensor.n_elements)
        nbytes = int(tensor.n_bytes)
        bits = nbytes * 8 // elements if kind in TORCH_NAMES and elements else 0
        # row-major, as the reader's arrays: [n_vocab, n_embd] for the embedding
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        entry = Entry(tensor.name, dtype, shape, nbytes, path.name, bits)
        start = int(tensor.data_offset)
        if nbytes and start + nbytes > size:  # the reader's memmap would be short
            raise Unreadable(f"truncated: tensor {tensor.name!r} ends past the file")
        data.add(tensor.name, Span(path, start, start + nbytes, entry))
        entries[tensor.name] = entry
    return entries, Gguf(_architecture(reader))


def _architecture(reader: object) -> str:
    field = getattr(reader, "fields", {}).get("general.architecture")
    if field is None:
        return ""
    try:
        return str(bytes(field.parts[field.data[0]]), encoding="utf-8")
    except (IndexError, TypeError, UnicodeDecodeError):
        return ""
