"""Which format a file is, and the metadata :func:`weightshare.save` records.

Nothing here imports torch: the command line reads a safetensors header with the
standard library alone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "GROUPS_KEY",
    "TORCH_SUFFIXES",
    "Unreadable",
    "detect",
    "one_line",
    "parse_groups",
]

GROUPS_KEY = "weightshare.shared_groups"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format: a pickle
GGUF_MAGIC = b"GGUF"


class Unreadable(Exception):
    """The input cannot be read; ``str(err)`` says why, on one line."""


def one_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it is empty."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def sniff(head: bytes) -> str | None:
    """``"safetensors"``, ``"torch"``, ``"gguf"`` or None, from the first 9 bytes.

    An ONNX file (a protobuf message) has no magic number: only its suffix says.

    Examples
    --------
    >>> from weightshare._checkpoint._format import sniff
    >>> sniff(bytes(8) + b"{"), sniff(b"PK\\x03\\x04"), sniff(b"GGUF"), sniff(b"")
    ('safetensors', 'torch', 'gguf', None)
    """
    if head[8:9] == b"{":
        return "safetensors"
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] == ZIP_MAGIC or head[:1] == PICKLE_MAGIC:
        return "torch"
    return None


def detect(path: Path) -> str:
    """The format of a file: by suffix first, else by its first bytes.

    Raises
    ------
    Unreadable
        If neither the suffix nor the content says.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in (".onnx", ".gguf"):
        return suffix[1:]
    with open(path, "rb") as handle:
        found = sniff(handle.read(9))
    if found is None:
        raise Unreadable(
            f"unknown format (suffix {suffix or 'none'!r}, and the content is not "
            "safetensors, torch.save or GGUF); give a .safetensors file, a torch "
            "checkpoint (.pt, .pth, .bin, .ckpt), an .onnx or .gguf file or a Hugging "
            "Face model folder"
        )
    return found


def parse_groups(groups: object) -> list[list[str]]:
    """Validate recorded groups: a list of lists of str.

    Examples
    --------
    >>> from weightshare._checkpoint._format import parse_groups
    >>> parse_groups([["emb.weight", "head.weight"]])
    [['emb.weight', 'head.weight']]
    >>> parse_groups({"emb.weight": "head.weight"})
    Traceback (most recent call last):
    ...
    ValueError: its 'weightshare.shared_groups' entry is not a list of lists of names
    """
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
    ):
        raise ValueError(f"its {GROUPS_KEY!r} entry is not a list of lists of names")
    return groups
