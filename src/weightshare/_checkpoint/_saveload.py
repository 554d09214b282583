"""Save and load checkpoints that keep ties: one tensor per shared group."""

from __future__ import annotations

import difflib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Literal

import safetensors
import safetensors.torch
import torch
from torch import nn

from .._errors import CheckpointError
from .._names import identity_groups, or_list
from .._unionfind import join
from ._format import GROUPS_KEY, parse_groups, sniff
from ._torch import from_torch, same_bytes

__all__ = ["checkpoint_groups", "load", "save"]

UNCHANGED = "the model was not changed"
Tensors = dict[str, torch.Tensor]


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: Literal["safetensors", "torch"] = "safetensors",
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a model's state with one tensor per tied group, atomically.

    Like ``state_dict()`` (parameters and persistent buffers), but a tied
    Parameter is stored once, under the first name of its group, and the groups
    are recorded in the file (metadata key ``"weightshare.shared_groups"``, as
    JSON). Tensors are detached, made contiguous and moved to the CPU. The file
    is written to a temporary file in the same directory and then moved into
    place with ``os.replace``, so an existing checkpoint is never left
    half-overwritten.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to save.
    path : str or ``os.PathLike``
        Destination file.
    format : ``"safetensors"`` or ``"torch"``, default ``"safetensors"``
        ``"safetensors"`` writes with ``safetensors.torch.save_file``;
        ``"torch"`` writes ``torch.save({"state_dict": ..., "shared_groups":
        ..., "metadata": ...})``. :func:`load` detects the format by itself.
    metadata : ``Mapping[str, str]``, optional
        Extra metadata to store (the key ``"weightshare.shared_groups"`` is
        reserved).

    Raises
    ------
    weightshare.CheckpointError
        If a tensor is on the meta device (it has no values) or the state
        holds a non-tensor entry.
    ValueError
        For an unknown ``format`` or invalid ``metadata``.

    Examples
    --------
    >>> import os, tempfile
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                        "head": nn.Linear(4, 10, bias=False)})
    >>> _ = ws.tie(model, "head.weight", "emb.weight")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     ws.save(model, path)
    ...     ws.checkpoint_groups(path)
    [['emb.weight', 'head.weight']]
    """
    if format not in ("safetensors", "torch"):
        raise ValueError(f"format must be 'safetensors' or 'torch', got {format!r}")
    extra = _check_metadata(metadata)
    state = _state(model)
    groups = [g for g in identity_groups(state.items()) if len(g) > 1]
    tensors = _deduplicate(state)
    if format == "safetensors":
        extra = {"format": "pt", **extra, GROUPS_KEY: json.dumps(groups)}
        _atomic_write(
            path, lambda tmp: safetensors.torch.save_file(tensors, tmp, extra)
        )
    else:
        obj = {"state_dict": tensors, "shared_groups": groups, "metadata": extra}
        _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    extra = dict(metadata or {})
    bad = [
        k for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str))
    ]
    if bad:
        raise ValueError(f"metadata keys and values must be str; not so for {bad!r}")
    if GROUPS_KEY in extra:
        raise ValueError(f"metadata key {GROUPS_KEY!r} is reserved by weightshare.save")
    return extra


def _state(model: nn.Module) -> Tensors:
    """``state_dict(keep_vars=True)`` checked to hold only tensors."""
    state = model.state_dict(keep_vars=True)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"cannot save state_dict key {key!r}: it holds a "
                f"{type(value).__name__} (extra state), not a tensor; weightshare "
                "checkpoints hold tensors only"
            )
    return dict(state)


def _deduplicate(state: Tensors) -> Tensors:
    """One detached, contiguous CPU tensor per object, under its first key."""
    out: Tensors = {}
    seen: set[int] = set()
    storages: set[int] = set()
    for key, tensor in state.items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if tensor.device.type == "meta":
            raise CheckpointError(
                f"cannot save {key!r}: it is on the meta device and has no values; "
                "materialise the model first (model.to_empty(device=...), initialise "
                "it, then weightshare.retie)"
            )
        value = tensor.detach().to("cpu").contiguous()
        storage = value.untyped_storage()._cdata
        out[key] = value.clone() if storage in storages else value
        storages.add(storage)
    return out


def _atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Write through ``write(tmp)`` then ``os.replace(tmp, path)``."""
    final = os.fspath(path)
    tmp = f"{final}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def checkpoint_groups(path: str | os.PathLike[str]) -> list[list[str]]:
    """The tie groups recorded in a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : str or ``os.PathLike``
        A safetensors or torch checkpoint.

    Returns
    -------
    list of list of str
        The groups of keys that were one tensor in the saved model; empty for a
        file written by other tools (e.g. a plain ``torch.save(state_dict)``).

    Raises
    ------
    weightshare.CheckpointError
        If the file cannot be read.

    Examples
    --------
    >>> import os, tempfile
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    >>> model[1].weight = model[0].weight
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.pt")
    ...     ws.save(model, path, format="torch")
    ...     ws.checkpoint_groups(path)
    [['0.weight', '1.weight']]
    """
    return _read(path, "")[1]


def load(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> None:
    """Load a checkpoint into ``model`` in place, keeping the model's ties.

    The whole file is validated before any value is copied, so the model is
    either fully loaded or not changed at all. The file is memory-mapped and each
    tensor is copied straight from the mapping into its parameter or buffer, so
    loading needs little memory beyond the model's own (the file's pages are page
    cache), and the model does not depend on the file afterwards. Keys left out by
    :func:`save` (the other names of a tied group) are filled from their group,
    using both the groups recorded in the file and the model's own ties. Values
    are copied in place (``param.copy_`` under
    :class:`torch.no_grad() <torch.no_grad>`), so every Parameter object, and hence
    every tie and any optimizer state, survives.
    Files written by ``safetensors`` or ``torch.save(state_dict)`` without
    weightshare load too.

    Parameters
    ----------
    model : :class:`torch.nn.Module`
        The model to load into (not on the meta device).
    path : str or ``os.PathLike``
        A safetensors or torch checkpoint (detected from the file).
    strict : bool, default True
        Raise if the file misses keys of the model or has keys the model lacks.
        With ``strict=False`` the matching keys are loaded and the rest ignored.

    Raises
    ------
    weightshare.CheckpointError
        If the file cannot be read (e.g. truncated or not a checkpoint); if
        keys that are tied disagree (naming them and the maximum absolute
        difference: it refuses to pick one silently); on a shape or dtype
        mismatch; in strict mode on missing or unexpected keys; or if the model
        is on the meta device. The model is not changed in any of these cases.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from torch import nn
    >>> import weightshare as ws
    >>> def build():
    ...     model = nn.ModuleDict({"emb": nn.Embedding(10, 4),
    ...                            "head": nn.Linear(4, 10, bias=False)})
    ...     _ = ws.tie(model, "head.weight", "emb.weight")
    ...     return model
    >>> source, target = build(), build()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     ws.save(source, path)
    ...     ws.load(target, path)
    >>> torch.equal(target.head.weight, source.head.weight)
    True
    >>> ws.shared_groups(target)
    [['emb.weight', 'head.weight']]
    """
    tensors, groups = _read(path, f"; {UNCHANGED}")
    pairs = _plan(model, tensors, groups, strict, os.fspath(path))
    with torch.no_grad():
        for dest, src in pairs:
            dest.copy_(src)


def _read(path: str | os.PathLike[str], note: str) -> tuple[Tensors, list[list[str]]]:
    """All tensors and recorded groups in a file; CheckpointError if unreadable.

    The tensors are memory-mapped from the file, not read into memory: a value is
    read from disk when it is used (compared, or copied into the model), and its
    pages belong to the page cache, which the kernel can drop again.
    """
    try:
        return _parse(os.fspath(path))
    except Exception as err:
        raise CheckpointError(
            f"could not read checkpoint {os.fspath(path)!r}: {err}; the file may be "
            f"truncated or not a weightshare checkpoint{note}"
        ) from err


def _parse(path: str) -> tuple[Tensors, list[list[str]]]:
    with open(path, "rb") as handle:
        head = handle.read(9)
    kind = sniff(head)
    if kind == "safetensors":
        # safe_open checks the header against the file's size: a truncated file
        # fails here, before any value is used.
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            names = f.keys()  # a safe_open object is not iterable
            tensors = {key: f.get_tensor(key) for key in names}
            meta = f.metadata() or {}
        return tensors, parse_groups(json.loads(meta.get(GROUPS_KEY, "[]")))
    if kind == "torch":
        # mmap needs the zip format of torch.save; the legacy pickle format is read.
        mmap = head[:4] == b"PK\x03\x04"
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return from_torch(obj)
    raise ValueError("it is neither a safetensors file nor a torch.save file")


def _plan(
    model: nn.Module,
    tensors: Tensors,
    file_groups: list[list[str]],
    strict: bool,
    path: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Validate everything; return the (destination, value) pairs to copy."""
    dests = _state(model)
    model_groups = [g for g in identity_groups(dests.items()) if len(g) > 1]
    components = _components(model_groups + file_groups)
    _check_agreement(tensors, components, path)
    sources = {key: _source(key, tensors, components) for key in dests}
    found = {key: src for key, src in sources.items() if src is not None}
    used = set(found.values())
    missing = [key for key, src in sources.items() if src is None]
    unexpected = sorted(k for k in tensors if k not in dests and k not in used)
    if strict and (missing or unexpected):
        raise CheckpointError(_key_message(path, missing, unexpected))
    _check_shapes(dests, tensors, found, path)
    unique = {id(dests[key]): (dests[key], tensors[src]) for key, src in found.items()}
    return list(unique.values())


def _components(groups: list[list[str]]) -> dict[str, list[str]]:
    """Each name -> the union of all groups it is connected to (ordered)."""
    return {name: members for members in join(groups) for name in members}


def _source(key: str, tensors: Tensors, components: dict[str, list[str]]) -> str | None:
    """The file key that holds ``key``'s value: itself, or a member of its group."""
    if key in tensors:
        return key
    return next((n for n in components.get(key, []) if n in tensors), None)


def _check_agreement(
    tensors: Tensors, components: dict[str, list[str]], path: str
) -> None:
    """Tied keys present more than once in the file must hold identical bytes.

    The rule for "stored once" that :func:`weightshare.check` applies too.
    """
    for name, members in components.items():
        present = [n for n in members if n in tensors]
        if name != members[0] or len(present) < 2:
            continue
        first = tensors[present[0]]
        for other in present[1:]:
            if not same_bytes(first, tensors[other]):
                raise CheckpointError(
                    _disagree(path, present[0], other, first, tensors[other])
                )


def _disagree(path: str, a: str, b: str, ta: torch.Tensor, tb: torch.Tensor) -> str:
    if ta.shape != tb.shape or ta.dtype != tb.dtype:
        what = f"{tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}"
    else:
        diff = (ta.to(torch.float64) - tb.to(torch.float64)).abs().max().item()
        what = f"max abs difference {diff:.3g}"
        if diff == 0:  # -0.0 against +0.0: equal values, different bytes
            what = "equal values but different bytes, such as -0.0 and +0.0"
    return (
        f"checkpoint {path!r}: keys {a!r} and {b!r} are tied (in the model or in the "
        f"file's recorded groups) but hold different values ({what}); refusing to "
        "pick one silently. Fix the file so they agree, or untie them in the model "
        f"(weightshare.untie) and load a file without recorded ties; {UNCHANGED}"
    )


def _key_message(path: str, missing: list[str], unexpected: list[str]) -> str:
    parts = [f"checkpoint {path!r} does not match the model"]
    if missing:
        hints = [_suggest(key, unexpected) for key in missing]
        parts.append(
            f"missing keys (in the model, not in the file): {', '.join(hints)}"
        )
    if unexpected:
        listed = or_list(unexpected, "and")
        parts.append(f"unexpected keys (in the file, not in the model): {listed}")
    parts.append(f"pass strict=False to load only the matching keys; {UNCHANGED}")
    return "; ".join(parts)


def _suggest(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1)
    return f"{key!r} (did you mean {match[0]!r}?)" if match else repr(key)


def _check_shapes(
    dests: Tensors, tensors: Tensors, found: dict[str, str], path: str
) -> None:
    problems = []
    for key, src in found.items():
        dest, value = dests[key], tensors[src]
        if dest.device.type == "meta":
            raise CheckpointError(
                f"cannot load {path!r} into {key!r}: the model is on the meta device, "
                "where copying values does nothing; materialise it first "
                f"(model.to_empty(device=...), then weightshare.retie); {UNCHANGED}"
            )
        if dest.shape != value.shape or dest.dtype != value.dtype:
            where = repr(key) if src == key else f"{key!r} (from {src!r})"
            problems.append(
                f"{where}: file has {tuple(value.shape)} {value.dtype}, model has "
                f"{tuple(dest.shape)} {dest.dtype}"
            )
    if problems:
        raise CheckpointError(
            f"checkpoint {path!r} does not fit the model: shape or dtype mismatch for "
            f"{'; '.join(problems)}; build the model with the same config as the "
            f"saved one, or convert the model with model.to(dtype); {UNCHANGED}"
        )
