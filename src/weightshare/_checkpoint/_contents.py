"""What a reader hands to the finding rules: entries, recorded ties, byte access.

The rule for "stored once" lives here, for :func:`weightshare.check` and
:func:`weightshare.load` alike: two tensors are one stored tensor when they have
the same dtype, the same shape and **identical bytes**. So ``-0.0`` and ``+0.0``
differ (their bytes do), and a NaN equals the same NaN (its bytes are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._gguf import Gguf

__all__ = ["STORED_ONCE", "Contents", "Data", "Entry"]

STORED_ONCE = "same dtype, same shape, identical bytes"


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
        """The first and last few kB of a tensor."""

    def equal(self, a: str, b: str) -> bool:
        """Whether two tensors of one dtype and shape hold identical bytes."""

    def constant(self, name: str) -> bool:
        """Whether every element of a tensor has the same bytes (e.g. all ones)."""

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        """Max absolute difference and number of differing elements (or None)."""

    def loads_equal(self, a: str, b: str, dtype: str) -> bool:
        """Whether the two tensors, cast to ``dtype``, are ``torch.equal``.

        This is the test ``from_pretrained`` applies to a tied pair that is
        stored twice (it casts each to the model's dtype first).
        """

    def close(self) -> None:
        """Release the files."""


@dataclass
class Contents:
    """Everything :func:`weightshare.check` needs from the input."""

    kind: str  # "safetensors", "torch", "huggingface", "onnx" or "gguf"
    files: list[str]
    entries: dict[str, Entry]
    recorded: list[list[str]]  # groups in weightshare metadata
    aliases: list[list[str]]  # torch: names that are one tensor (one storage, view)
    views: list[list[str]]  # torch: names that are different views of one storage
    stored_bytes: int
    data: Data
    dropped: dict[str, str] = field(default_factory=dict)  # save_model: gone -> kept
    bad_metadata: list[str] = field(default_factory=list)  # what is wrong with groups
    transposed: list[list[str]] = field(default_factory=list)  # [a, b], b = a.T
    gguf: Gguf | None = None  # a GGUF file's architecture
