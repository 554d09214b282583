"""The entry point of :func:`weightshare.check`: read the input, apply the rules.

Which reader runs depends on the input: :mod:`._safetensors` for a safetensors file
(no torch), :mod:`._torch` for a torch checkpoint, and for a Hugging Face folder
its weight files plus :mod:`._hf` (and :mod:`._transformers`) for what the
architecture declares. The rules (:mod:`._rules`) then make the report
(:mod:`._report`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import CheckpointError
from ._contents import Contents, Entry
from ._format import Unreadable, detect, one_line
from ._hf import Declared, declared_ties, read_config, weight_files
from ._mapped import MappedFiles
from ._report import CheckReport, TensorInfo, TieInfo
from ._rules import findings, ties
from ._safetensors import read_safetensors

if TYPE_CHECKING:
    import torch

__all__ = ["check"]


def check(
    path: str | os.PathLike[str], *, use_transformers: bool = True
) -> CheckReport:
    """Check a checkpoint's tensors and ties on disk, without loading the model.

    Reads safetensors headers and compares tensor bytes through memory maps,
    a chunk at a time: only tensors of equal dtype and shape are compared, and
    a torch checkpoint is opened with ``torch.load(weights_only=True,
    mmap=True)``. It reports:

    - the tensors: names, dtypes, shapes and bytes;
    - the ties: groups recorded by :func:`weightshare.save`, storage shared in a
      torch checkpoint, and for a Hugging Face folder the ties its architecture
      declares (the model built from ``config.json`` on the meta device when
      ``transformers`` is installed; else the flag ``tie_word_embeddings``, with
      the usual names assumed; :attr:`CheckReport.method` says which);
    - findings: identical bytes stored more than once; a tie whose saved
      tensors differ (by how much, and which wins on load); a tie whose names
      are all missing, or an untied output layer that is missing; tied
      tensors whose shapes disagree; for a folder, tensors whose shape differs
      from the model's and model keys that the file lacks.

    A safetensors file is validated as ``safetensors.safe_open`` validates it
    (a file it refuses raises :class:`~weightshare.CheckpointError`). Neither
    torch nor transformers is imported for a safetensors file; a folder's
    custom code (``auto_map`` in ``config.json``) is never run.

    Parameters
    ----------
    path : str or ``os.PathLike``
        A ``.safetensors`` file, a torch checkpoint (``.pt``, ``.pth``,
        ``.bin``, ``.ckpt``), a Hugging Face model folder (``config.json`` and
        ``model.safetensors``, ``pytorch_model.bin`` or their sharded files with
        the index), an ONNX model (``.onnx``, with its external data files; read
        with ``onnx``, whose refusals it shares; initializers stored twice, also
        transposed, are reported) or a GGUF file (``.gguf``; read with
        ``gguf.GGUFReader``; an ``output.weight`` that copies
        ``token_embd.weight``, or that is missing where llama.cpp requires it,
        is reported).
    use_transformers : bool, default True
        For a folder: build the model with ``transformers`` when it is
        installed. With False, only the config flag is read.

    Returns
    -------
    weightshare.CheckReport
        The report; ``report.format()`` is the command line's text and
        ``report.to_dict()`` its JSON.

    Raises
    ------
    weightshare.CheckpointError
        If the input cannot be read: a missing path, an unknown format, a
        truncated or corrupt file. The message is one line, ``"<path>:
        <problem>"``.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> import weightshare as ws
    >>> weight = torch.randn(100, 8)
    >>> state = {"emb.weight": weight, "head.weight": weight.clone()}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     save_file(state, path)
    ...     report = ws.check(path)
    >>> report.status
    1
    >>> [(f.kind, f.names, f.bytes) for f in report.findings]
    [('duplicate', ('emb.weight', 'head.weight'), 3200)]
    """
    label = os.fspath(path)
    try:
        contents, declared = _read(Path(path), use_transformers)
    except (Unreadable, OSError) as err:
        raise CheckpointError(f"{label}: {_problem(err)}") from err
    try:
        return _report(label, contents, declared)
    except OSError as err:
        raise CheckpointError(f"{label}: {_problem(err)}") from err
    finally:
        contents.data.close()


def _problem(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return one_line(err)


def _read(path: Path, use_transformers: bool) -> tuple[Contents, Declared | None]:
    if not path.exists():
        raise Unreadable("no such file or folder")
    if path.is_dir():
        return _read_folder(path, use_transformers)
    kind = detect(path)
    if kind == "safetensors":
        return _read_safetensors(path.parent, [path.name], "safetensors"), None
    if kind == "onnx":
        return _read_onnx(path), None
    if kind == "gguf":
        return _read_gguf(path), None
    return _read_torch(path.parent, [path.name], "torch"), None


def _read_onnx(path: Path) -> Contents:
    from ._onnx import read_onnx, transposed_pairs

    entries, data = read_onnx(path)
    stored = sum(entry.nbytes for entry in entries.values())
    files = [path.name, *sorted({e.file for e in entries.values()} - {path.name})]
    contents = Contents("onnx", files, entries, [], [], [], stored, data)
    contents.transposed = transposed_pairs(entries, data)
    return contents


def _read_gguf(path: Path) -> Contents:
    from ._gguf import read_gguf

    data = MappedFiles()
    try:
        entries, gguf = read_gguf(path, data)
    except BaseException:
        data.close()
        raise
    stored = sum(entry.nbytes for entry in entries.values())
    contents = Contents("gguf", [path.name], entries, [], [], [], stored, data)
    contents.gguf = gguf
    return contents


def _read_safetensors(folder: Path, files: list[str], kind: str) -> Contents:
    data = MappedFiles()
    entries: dict[str, Entry] = {}
    recorded: list[list[str]] = []
    dropped: dict[str, str] = {}
    bad: list[str] = []
    try:
        for name in files:
            found, groups, gone = read_safetensors(folder / name, name, data)
            _merge(entries, found)
            if isinstance(groups, str):
                bad.append(f"{name}: {groups}")
            else:
                recorded += groups
            dropped.update(gone)
    except BaseException:
        data.close()
        raise
    stored = sum(entry.nbytes for entry in entries.values())
    dropped = {gone: kept for gone, kept in dropped.items() if kept in entries}
    contents = Contents(kind, files, entries, recorded, [], [], stored, data)
    contents.dropped, contents.bad_metadata = dropped, bad
    return contents


def _merge(entries: dict[str, Entry], found: dict[str, Entry]) -> None:
    for name, entry in found.items():
        if name in entries:
            raise Unreadable(
                f"tensor {name!r} is in both {entries[name].file} and {entry.file}"
            )
        entries[name] = entry


def _read_torch(folder: Path, files: list[str], kind: str) -> Contents:
    from ._torch import TorchTensors, read_torch, torch_contents

    tensors: dict[str, torch.Tensor] = {}
    recorded: list[list[str]] = []
    entries: dict[str, Entry] = {}
    aliases: list[list[str]] = []
    views: list[list[str]] = []
    stored = 0
    for name in files:
        found, groups = read_torch(folder / name, name)
        file_entries, file_aliases, file_views, file_bytes = torch_contents(found, name)
        _merge(entries, file_entries)
        tensors.update(found)
        recorded += groups
        aliases += file_aliases
        views += file_views
        stored += file_bytes
    data = TorchTensors(tensors)
    return Contents(kind, files, entries, recorded, aliases, views, stored, data)


def _read_folder(path: Path, use_transformers: bool) -> tuple[Contents, Declared]:
    config = read_config(path)
    files, index = weight_files(path)
    if files[0].endswith(".safetensors"):
        contents = _read_safetensors(path, files, "huggingface")
    else:
        contents = _read_torch(path, files, "huggingface")
    declared = declared_ties(path, config, contents.entries, use_transformers)
    listed = ["config.json"] if config is not None else []
    contents.files = [*listed, *([index] if index else []), *files]
    return contents, declared


def _report(label: str, contents: Contents, declared: Declared | None) -> CheckReport:
    entries = contents.entries
    found = ties(contents, declared)
    problems, constant = findings(contents, declared, found)
    return CheckReport(
        path=label,
        kind=contents.kind,
        files=tuple(contents.files),
        method=_method(contents, declared),
        tensors=tuple(
            TensorInfo(e.name, e.dtype, e.shape, e.nbytes, e.file)
            for e in entries.values()
        ),
        ties=tuple(TieInfo(tuple(t.names), t.source, tuple(t.saved)) for t in found),
        findings=tuple(problems),
        constant_groups=constant,
        stored_bytes=contents.stored_bytes,
    )


def _gguf_method(architecture: str, ties: str) -> str:
    arch = f"architecture {architecture!r}" if architecture else "no architecture"
    how = {
        "falls back": "llama.cpp uses token_embd.weight when output.weight is absent",
        "requires output": "llama.cpp requires output.weight",
        "unknown": "whether llama.cpp falls back to token_embd.weight is not known "
        "here, so a missing output.weight is not judged",
    }[ties]
    return f"GGUF {arch}: {how}"


def _method(contents: Contents, declared: Declared | None) -> str:
    parts = [declared.method] if declared else []
    if contents.recorded:
        parts.append("ties recorded by weightshare.save")
    if contents.dropped:
        parts.append("ties recorded by safetensors.torch.save_model")
    if contents.kind == "torch" or contents.aliases or contents.views:
        parts.append("torch storage sharing")
    if contents.kind == "onnx":
        parts.append(
            "ONNX initializers (the format records no ties): identical bytes, and "
            "2-D pairs stored transposed"
        )
    if contents.gguf is not None:
        parts.append(_gguf_method(contents.gguf.architecture, contents.gguf.ties))
    if not parts:
        parts.append(
            "safetensors header: no ties recorded (weightshare.save records them)"
        )
    return "; ".join(parts)
