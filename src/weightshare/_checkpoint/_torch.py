"""Read torch checkpoints for :func:`weightshare.check` (internal).

A torch checkpoint is opened with ``torch.load(weights_only=True, mmap=True)``,
which keeps its storage sharing (tied names saved by ``torch.save`` are one
storage in the file). Only this module, and only for such files, imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ._contents import Entry
from ._format import PICKLE_MAGIC, ZIP_MAGIC, Unreadable, one_line, parse_groups

if TYPE_CHECKING:
    import torch

__all__ = [
    "TorchTensors",
    "compare",
    "from_torch",
    "read_torch",
    "same_bytes",
    "torch_contents",
]

SAMPLE = 4096


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The "stored once" rule on torch tensors (see :mod:`._contents`).

    Examples
    --------
    >>> import torch
    >>> from weightshare._checkpoint._torch import same_bytes
    >>> same_bytes(torch.tensor([0.0]), torch.tensor([-0.0]))  # torch.equal: True
    False
    >>> nan = torch.tensor([float("nan")])
    >>> same_bytes(nan, nan.clone())  # torch.equal: False
    True
    """
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    left = a.detach().contiguous().reshape(-1).view(torch.uint8)
    right = b.detach().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(left, right)


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float | None, int | None]:
    """Max ``|a - b|`` over the elements whose bytes differ, and their number.

    ``a`` and ``b`` are 1-D, of one length. The maximum leaves out NaN gaps and is
    None where a dtype cannot be converted to float64 or complex128.
    """
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    size = a.element_size()
    if a.dtype == b.dtype and size in ints:
        differ = a.view(ints[size]) != b.view(ints[size])
    else:
        differ = a != b
    count = int(differ.sum())
    try:
        x, y = a[differ], b[differ]
        wide = torch.complex128 if x.is_complex() or y.is_complex() else torch.float64
        gap = (x.to(wide) - y.to(wide)).abs()
    except (RuntimeError, TypeError):
        return None, count
    gap = gap[~gap.isnan()]
    return (float(gap.max()) if gap.numel() else None), count


def larger(a: float | None, b: float | None) -> float | None:
    """The larger of two optional numbers."""
    return b if a is None else a if b is None else max(a, b)


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
        return same_bytes(self.tensors[a], self.tensors[b])

    def constant(self, name: str) -> bool:
        rows = self._bytes(name).view(-1, self.tensors[name].element_size())
        return bool((rows == rows[0]).all()) if len(rows) else True

    def difference(self, a: str, b: str) -> tuple[float | None, int | None]:
        return compare(self._flat(a), self._flat(b))

    def loads_equal(self, a: str, b: str, dtype: str) -> bool:
        import torch

        target = getattr(torch, dtype, None)
        if not isinstance(target, torch.dtype):
            return self.equal(a, b)
        x, y = self.tensors[a], self.tensors[b]
        return x.shape == y.shape and torch.equal(x.to(target), y.to(target))

    def close(self) -> None:
        self.tensors = {}


def from_torch(obj: object) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """The state dict and recorded groups of a loaded torch checkpoint.

    A :func:`weightshare.save` file is ``{"state_dict": ..., "shared_groups":
    ...}``; any other dict of names to tensors is a plain state dict.
    """
    import torch

    if isinstance(obj, dict) and "state_dict" in obj:
        state, groups = obj["state_dict"], obj.get("shared_groups", [])
    else:
        state, groups = obj, []
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError("it holds no state_dict (a dict of names to tensors)")
    return state, parse_groups(groups)


def read_torch(
    path: Path, label: str
) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """All tensors of a ``torch.save`` file, by dotted name, and recorded groups."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise Unreadable("the file is empty")
    if magic != ZIP_MAGIC and magic[:1] != PICKLE_MAGIC:
        raise Unreadable(
            "not a torch checkpoint: it is neither a zip archive (torch.save) nor a "
            "pickle (legacy torch.save)"
        )
    import pickle

    import torch

    try:
        obj = torch.load(
            path, map_location="cpu", weights_only=True, mmap=magic == ZIP_MAGIC
        )
    except pickle.UnpicklingError as err:
        raise Unreadable(_refused(err)) from err
    except Exception as err:  # torch.load raises many types for a damaged file
        raise Unreadable(
            f"torch.load(weights_only=True) failed: {_sentence(err)}; the file may be "
            "truncated or corrupt"
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and "shared_groups" in obj:
        try:
            return from_torch(obj)
        except ValueError as err:
            raise Unreadable(
                f"corrupt weightshare checkpoint: {one_line(err)}"
            ) from err
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, "", tensors)
    return tensors, []


def _refused(err: BaseException) -> str:
    """What ``weights_only`` refused, and how to load the file knowingly."""
    text = str(err)
    if "Weights only load failed" not in text:
        return (
            f"torch.load(weights_only=True) failed: {_sentence(err)}; the file may be "
            "truncated or corrupt"
        )
    found = re.search(r"GLOBAL ([\w.]+)", text)
    name = found.group(1) if found else ""
    if name and "is blocked" in text:  # sys, os, posix, nt: never allowed
        return (
            f"torch.load(weights_only=True) refused {name}: the pickle refers to "
            "a module torch blocks outright, which a file of weights never needs; "
            "loaded with weights_only=False the file could run code. Do not load "
            "it so unless you made it; ask its source for a "
            "safetensors file"
        )
    if name:
        what, allow = f"{name}, which is not on torch's allowlist", f"[{name}]"
    else:
        what = next(
            (
                line.strip().removeprefix("WeightsUnpickler error:").strip()
                for line in text.splitlines()
                if "WeightsUnpickler error" in line
            ),
            "an object outside torch's allowlist",
        ).rstrip(".")
        allow = "[...]"
    return (
        "torch.load(weights_only=True) refused an object that is not a tensor or a "
        f"plain container ({what}); the file is intact but holds more than weights "
        "(such as a training checkpoint's hyper-parameters). If you trust its "
        f"source, allow that type with torch.serialization.add_safe_globals({allow}) "
        "or load it with torch.load(path, weights_only=False), save its state_dict "
        "on its own, and check that file"
    )


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
