"""Check a checkpoint's ties on disk, without loading the model.

:func:`check` reads a safetensors file, a torch checkpoint or a Hugging Face model
folder and reports its tensors, its ties (recorded by :func:`weightshare.save`,
shared storage, or declared by the architecture) and what loading it will do to
them. ``weightshare check PATH`` prints the same report on the command line.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import CheckpointError
from ._hf import Declared, declared_ties, read_config, weight_files
from ._read import (
    TORCH_SUFFIXES,
    Contents,
    Data,
    Entry,
    MappedFiles,
    TorchTensors,
    Unreadable,
    one_line,
    read_safetensors,
    read_torch,
    torch_contents,
)

__all__ = ["CheckReport", "Finding", "TensorInfo", "TieInfo", "check"]

SCHEMA = 1
CHECKED = "checked on transformers 5.23"
KINDS = {
    "safetensors": "safetensors file",
    "torch": "torch checkpoint",
    "huggingface": "Hugging Face folder",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checked checkpoint.

    Attributes
    ----------
    name : str
        Its key in the file.
    dtype : str
        Its element type, named as in torch (``"float32"``, ``"bfloat16"``).
    shape : tuple of int
        Its shape.
    nbytes : int
        Bytes of its data.
    file : str
        The file that holds it (a shard's name in a sharded folder).

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> import weightshare as ws
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     save_file({"emb.weight": torch.zeros(10, 4)}, path)
    ...     ws.check(path).tensors
    (TensorInfo(name='emb.weight', dtype='float32', shape=(10, 4), nbytes=160, \
file='model.safetensors'),)
    """

    __module__ = "weightshare"

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str


@dataclass(frozen=True)
class TieInfo:
    """A group of names that are one tensor, or that loading makes one.

    Attributes
    ----------
    names : tuple of str
        The names of the group.
    source : str
        Where the tie comes from: ``"metadata"`` (recorded by
        :func:`weightshare.save`), ``"storage"`` (one storage in a torch
        checkpoint), ``"views"`` (different views of one storage),
        ``"architecture"`` (the transformers model built from ``config.json``) or
        ``"config"`` (the flag ``tie_word_embeddings``, names assumed).
    saved : tuple of str
        The names of the group that the file holds; loading fills the others.

    Examples
    --------
    >>> import os, tempfile
    >>> from torch import nn
    >>> import weightshare as ws
    >>> model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    >>> model[1].weight = model[0].weight
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     ws.save(model, path)
    ...     ws.check(path).ties
    (TieInfo(names=('0.weight', '1.weight'), source='metadata', saved=('0.weight',)),)
    """

    __module__ = "weightshare"

    names: tuple[str, ...]
    source: str
    saved: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """A problem :func:`weightshare.check` found, what loading does, how to fix it.

    Attributes
    ----------
    kind : str
        ``"duplicate"`` (identical bytes stored more than once),
        ``"tie-differs"`` (a tie whose saved tensors hold different values),
        ``"tie-shape"`` (a tie whose saved tensors differ in shape or dtype),
        ``"tie-missing"`` (a tie none of whose names is in the file) or
        ``"untied-missing"`` (the config unties the output layer, which the file
        lacks).
    names : tuple of str
        The tensors concerned.
    bytes : int
        Bytes stored more than once (``"duplicate"``); 0 for the other kinds.
    message : str
        What is wrong.
    on_load : str
        What loading the checkpoint will do.
    fix : str
        How to fix it.
    max_abs_diff : float or None
        ``"tie-differs"``: the largest absolute difference between the values.
    differing : int or None
        ``"tie-differs"``: how many elements differ.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> import weightshare as ws
    >>> weight = torch.randn(10, 4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     save_file({"emb.weight": weight, "head.weight": weight.clone()}, path)
    ...     [finding] = ws.check(path).findings
    >>> finding.kind, finding.names, finding.bytes
    ('duplicate', ('emb.weight', 'head.weight'), 160)
    """

    __module__ = "weightshare"

    kind: str
    names: tuple[str, ...]
    bytes: int
    message: str
    on_load: str
    fix: str
    max_abs_diff: float | None = None
    differing: int | None = None


@dataclass(frozen=True)
class CheckReport:
    """What :func:`weightshare.check` found in one checkpoint.

    Attributes
    ----------
    path : str
        The path as given.
    kind : str
        ``"safetensors"``, ``"torch"`` or ``"huggingface"`` (a model folder).
    files : tuple of str
        The files read, relative to a folder.
    method : str
        How the ties were found, and what was assumed.
    tensors : tuple of weightshare.TensorInfo
        Every tensor, in file order.
    ties : tuple of weightshare.TieInfo
        The tie groups found.
    findings : tuple of weightshare.Finding
        The problems found; empty for a clean checkpoint.
    constant_groups : int
        Groups of identical tensors whose elements are all equal (such as zero
        biases or unit norm weights of a fresh model): not reported as
        duplicates, since such tensors are equal by construction.
    stored_bytes : int
        Bytes of tensor data in the files (a shared torch storage counts once).

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> import weightshare as ws
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     save_file({"emb.weight": torch.randn(10, 4)}, path)
    ...     report = ws.check(path)
    >>> report.status, report.stored_bytes, report.findings
    (0, 160, ())
    >>> print(report.format().replace(tmp, "TMP"))
    TMP/model.safetensors: safetensors file (model.safetensors)
      tensors:  1 in 1 file, 160 B, all float32
      largest:  emb.weight float32 [10, 4] 160 B
      ties by:  safetensors header: no ties recorded (weightshare.save records them)
      findings: none
    """

    __module__ = "weightshare"

    path: str
    kind: str
    files: tuple[str, ...]
    method: str
    tensors: tuple[TensorInfo, ...]
    ties: tuple[TieInfo, ...]
    findings: tuple[Finding, ...]
    constant_groups: int = 0
    stored_bytes: int = 0

    @property
    def status(self) -> int:
        """The exit status of the command for this report (1 on findings, else 0)."""
        return 1 if self.findings else 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``weightshare check --json`` prints it)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "files": list(self.files),
            "method": self.method,
            "status": self.status,
            "stored_bytes": self.stored_bytes,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "bytes": t.nbytes,
                    "file": t.file,
                }
                for t in self.tensors
            ],
            "ties": [
                {"names": list(t.names), "source": t.source, "saved": list(t.saved)}
                for t in self.ties
            ],
            "constant_groups": self.constant_groups,
            "findings": [
                {
                    "kind": f.kind,
                    "names": list(f.names),
                    "bytes": f.bytes,
                    "message": f.message,
                    "on_load": f.on_load,
                    "fix": f.fix,
                    "max_abs_diff": f.max_abs_diff,
                    "differing": f.differing,
                }
                for f in self.findings
            ],
        }

    def format(self, width: int = 88) -> str:
        """The report as plain text (``weightshare check`` prints it).

        Lines are wrapped at ``width`` columns (names are never broken).
        """
        head = 12  # the width of "  findings: "
        first = f"{self.path}: {KINDS[self.kind]} ({', '.join(self.files)})"
        lines: list[tuple[str, int]] = []
        lines.append((f"  tensors:  {self._summary()}", head))
        largest = sorted(self.tensors, key=lambda t: -t.nbytes)[:3]
        if largest:
            lines.append(("  largest:  " + "; ".join(map(_describe, largest)), head))
        lines.append((f"  ties by:  {self.method}", head))
        lines += [(f"  tie:      {_tie_line(tie)}", head) for tie in self.ties]
        if self.constant_groups:
            text = (
                f"  constant: {self.constant_groups} group(s) of identical tensors "
                "whose elements are all one value (such as zero biases), not reported"
            )
            lines.append((text, head))
        lines.append((f"  findings: {len(self.findings) or 'none'}", head))
        for number, finding in enumerate(self.findings, 1):
            lines.append((f"  {number}. {finding.kind}: {finding.message}", 5))
            lines.append((f"     on load: {finding.on_load}", 7))
            lines.append((f"     fix: {finding.fix}", 7))
        wrapped = [_wrap(line, hang, width) for line, hang in lines]
        return "\n".join([first, *wrapped])  # the first line: a path, not wrapped

    def _summary(self) -> str:
        files = len({t.file for t in self.tensors})
        dtypes = Counter(t.dtype for t in self.tensors)
        kinds = (
            f"all {next(iter(dtypes))}"
            if len(dtypes) == 1
            else ", ".join(f"{count} {dtype}" for dtype, count in dtypes.most_common())
        )
        text = f"{len(self.tensors)} in {files} file{'s' * (files != 1)}"
        return f"{text}, {_size(self.stored_bytes)}" + (f", {kinds}" if dtypes else "")


def _wrap(line: str, hang: int, width: int) -> str:
    """Wrap, but never inside a shape (``[1000, 32]``) or a size (``16.4 kB``)."""
    glued = _SHAPE.sub(lambda m: m[0].replace(" ", _GLUE), line)
    glued = _SIZE.sub(rf"\1{_GLUE}\2", glued)
    return textwrap.fill(
        glued,
        width=width,
        subsequent_indent=" " * hang,
        break_long_words=False,
        break_on_hyphens=False,
    ).replace(_GLUE, " ")


_GLUE = "\xa0"  # a no-break space: textwrap does not split at it
_SHAPE = re.compile(r"\[[\d, ]*\]")
_SIZE = re.compile(r"(\d) (B|kB|MB|GB)\b")


def _size(nbytes: int) -> str:
    """Bytes in decimal units: ``160 B``, ``1.6 kB``, ``154.4 MB``."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{nbytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError(unit)  # pragma: no cover - the loop always returns


def _describe(tensor: TensorInfo) -> str:
    return f"{tensor.name} {tensor.dtype} {list(tensor.shape)} {_size(tensor.nbytes)}"


def _tie_line(tie: TieInfo) -> str:
    if tie.source == "storage":
        return f"{' = '.join(tie.names)} (one storage in the file)"
    if tie.source == "views":
        return f"{_and(tie.names)} are different views of one storage in the file"
    where = {
        "metadata": "recorded by weightshare.save",
        "architecture": "declared by the architecture",
        "config": "assumed from the config flag",
    }[tie.source]
    if not tie.saved:
        saved = "none saved"
    elif len(tie.saved) == 1:
        saved = f"saved once, as {tie.saved[0]}"
    else:
        saved = f"saved as {_and(tie.saved)}"
    return f"{' = '.join(tie.names)} ({where}; {saved})"


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# --- reading --------------------------------------------------------------------------


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
      tensors whose shapes disagree.

    Parameters
    ----------
    path : str or ``os.PathLike``
        A ``.safetensors`` file, a torch checkpoint (``.pt``, ``.pth``,
        ``.bin``, ``.ckpt``) or a Hugging Face model folder (``config.json`` and
        ``model.safetensors``, ``pytorch_model.bin`` or their sharded files with
        the index).
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
    kind = _kind(path)
    if kind == "safetensors":
        return _read_safetensors(path.parent, [path.name], "safetensors"), None
    return _read_torch(path.parent, [path.name], "torch"), None


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise Unreadable(
        f"unknown format (suffix {suffix or 'none'!r}, and the content is neither "
        "safetensors nor torch.save); give a .safetensors file, a torch checkpoint "
        "(.pt, .pth, .bin, .ckpt) or a Hugging Face model folder"
    )


def _read_safetensors(folder: Path, files: list[str], kind: str) -> Contents:
    data = MappedFiles()
    entries: dict[str, Entry] = {}
    recorded: list[list[str]] = []
    try:
        for name in files:
            found, groups = read_safetensors(folder / name, name, data)
            _merge(entries, found)
            recorded += groups
    except BaseException:
        data.close()
        raise
    stored = sum(entry.nbytes for entry in entries.values())
    return Contents(kind, files, entries, recorded, [], [], stored, data)


def _merge(entries: dict[str, Entry], found: dict[str, Entry]) -> None:
    for name, entry in found.items():
        if name in entries:
            raise Unreadable(
                f"tensor {name!r} is in both {entries[name].file} and {entry.file}"
            )
        entries[name] = entry


def _read_torch(folder: Path, files: list[str], kind: str) -> Contents:
    tensors: dict[str, Any] = {}
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


# --- findings -------------------------------------------------------------------------


@dataclass
class _Tie:
    names: list[str]
    source: str
    by: str  # how the tie is declared, for messages
    first: str = ""  # the name loading fills the others from
    saved: list[str] = field(default_factory=list)


def _report(label: str, contents: Contents, declared: Declared | None) -> CheckReport:
    entries = contents.entries
    ties = _ties(contents, declared)
    findings: list[Finding] = []
    for tie in ties:
        findings += _tie_findings(tie, contents, declared)
    for name in declared.untied_missing if declared else []:
        findings.append(_untied_missing(name))
    duplicates, constant = _duplicates(contents)
    findings += [_duplicate(group, entries, ties) for group in duplicates]
    return CheckReport(
        path=label,
        kind=contents.kind,
        files=tuple(contents.files),
        method=_method(contents, declared),
        tensors=tuple(
            TensorInfo(e.name, e.dtype, e.shape, e.nbytes, e.file)
            for e in entries.values()
        ),
        ties=tuple(TieInfo(tuple(t.names), t.source, tuple(t.saved)) for t in ties),
        findings=tuple(findings),
        constant_groups=constant,
        stored_bytes=contents.stored_bytes,
    )


def _method(contents: Contents, declared: Declared | None) -> str:
    parts = [declared.method] if declared else []
    if contents.recorded:
        parts.append("ties recorded by weightshare.save")
    if contents.kind == "torch" or contents.aliases or contents.views:
        parts.append("torch storage sharing")
    if not parts:
        parts.append(
            "safetensors header: no ties recorded (weightshare.save records them)"
        )
    return "; ".join(parts)


def _ties(contents: Contents, declared: Declared | None) -> list[_Tie]:
    ties = [
        _Tie(list(group), "metadata", "the groups recorded by weightshare.save")
        for group in contents.recorded
    ]
    ties += [_Tie(group, "storage", "one storage") for group in contents.aliases]
    ties += [_Tie(group, "views", "one storage") for group in contents.views]
    if declared is not None:
        by = "config.json (tie_word_embeddings=true)"
        if declared.source == "architecture":
            flag = " (config.json: tie_word_embeddings=true)" * bool(declared.flag)
            by = f"the architecture{flag}"
        for index, group in enumerate(declared.groups):
            first = declared.sources.get(index, group[0])
            ties.append(_Tie(group, declared.source, by, first))
    for tie in ties:
        tie.saved = [name for name in tie.names if name in contents.entries]
        tie.first = tie.first or tie.names[0]
    return ties


def _tie_findings(
    tie: _Tie, contents: Contents, declared: Declared | None
) -> list[Finding]:
    if tie.source in ("storage", "views"):
        return []
    entries = contents.entries
    if not tie.saved:
        return [_tie_missing(tie)]
    kinds = {(entries[n].dtype, entries[n].shape) for n in tie.saved}
    if len(kinds) > 1:
        return [_tie_shape(tie, entries, declared)]
    first = tie.saved[0]
    differ = [n for n in tie.saved[1:] if not contents.data.equal(first, n)]
    if not differ:
        return []
    return [_tie_differs(tie, first, differ, contents)]


def _tie_missing(tie: _Tie) -> Finding:
    names = _and(tie.names)
    if tie.source == "metadata":
        return Finding(
            "tie-missing",
            tuple(tie.names),
            0,
            f"the recorded tie group {names} names no tensor in the file",
            "weightshare.load cannot fill these names: it raises CheckpointError "
            "(missing keys), or with strict=False leaves them as the model has them",
            "save again from the model with weightshare.save: this file's metadata "
            "does not match its tensors",
        )
    return Finding(
        "tie-missing",
        tuple(tie.names),
        0,
        f"{names} are tied by {tie.by}, but none of them is in the file",
        f"from_pretrained ({CHECKED}) warns that the checkpoint seems corrupted and "
        "initialises them randomly",
        "save again from the trained model",
    )


def _tie_shape(
    tie: _Tie, entries: dict[str, Entry], declared: Declared | None
) -> Finding:
    shapes = "; ".join(
        f"{n} {entries[n].dtype} {list(entries[n].shape)}" for n in tie.saved
    )
    message = (
        f"{_and(tie.saved)} are tied by {tie.by}, but their shapes or dtypes "
        f"differ: {shapes}"
    )
    if tie.source == "metadata":
        on_load = (
            "weightshare.load refuses the file with a CheckpointError naming the keys "
            "and their shapes"
        )
        fix = "save again from the model with weightshare.save"
    else:
        model = declared.shapes if declared else {}
        wrong = [n for n in tie.saved if n in model and entries[n].shape != model[n]]
        which = _and(wrong) if wrong else "the one whose shape differs from the model's"
        on_load = (
            f"from_pretrained ({CHECKED}) stops with a size-mismatch error for {which}"
        )
        fix = "save again from the trained model"
    return Finding("tie-shape", tuple(tie.saved), 0, message, on_load, fix)


def _tie_differs(
    tie: _Tie, first: str, differ: list[str], contents: Contents
) -> Finding:
    worst: float | None = None
    count: int | None = None
    for other in differ:
        most, changed = contents.data.difference(first, other)
        if most is not None and (worst is None or most > worst):
            worst = most
        if changed is not None:
            count = max(count or 0, changed)
    names = [first, *differ]
    entry = contents.entries[first]
    numel = entry.nbytes * 8 // entry.bits if entry.bits else None
    how = f"max abs difference {worst:.3g}" if worst is not None else "different bytes"
    if count is not None and numel:
        how += f", {count:,} of {numel:,} elements differ"
    message = (
        f"{_and(names)} are tied by {tie.by}, but the file holds different values "
        f"for them: {how}"
    )
    if tie.source == "metadata":
        on_load = (
            "weightshare.load refuses the file with a CheckpointError naming both "
            "keys and their difference"
        )
        fix = (
            "decide which values are right and save again from the model with "
            "weightshare.save, which stores each tie group once"
        )
    else:
        targets = [n for n in names if n != tie.first]
        on_load = (
            f"from_pretrained ({CHECKED}) logs a warning and does not tie them: each "
            "loads its own saved values, so the model is untied although its config "
            f"ties it; a later model.tie_weights() (resize_token_embeddings calls it) "
            f"overwrites {_and(targets)} with {tie.first}"
        )
        fix = (
            f"decide which values are right and store them once, as {tie.first} "
            "(loading fills the tied names from it), or set tie_word_embeddings to "
            "false in config.json if the model is meant to be untied"
        )
    return Finding("tie-differs", tuple(names), 0, message, on_load, fix, worst, count)


def _untied_missing(name: str) -> Finding:
    return Finding(
        "untied-missing",
        (name,),
        0,
        f"config.json unties the model (tie_word_embeddings=false), but the file has "
        f"no {name}",
        f"from_pretrained ({CHECKED}) initialises {name} randomly and lists it as "
        "MISSING in its load report: the model's outputs are noise",
        f"if {name} is meant to be the input embedding, set tie_word_embeddings to "
        f"true in config.json; otherwise save again from the trained model, with "
        f"{name}",
    )


def _duplicates(contents: Contents) -> tuple[list[list[str]], int]:
    """Groups of identical tensors stored apart, and the number of constant groups."""
    data, entries = contents.data, contents.entries
    aliased = {name for group in contents.aliases for name in group[1:]}
    by_kind: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for name, entry in entries.items():
        if entry.nbytes and name not in aliased:
            by_kind.setdefault((entry.dtype, entry.shape), []).append(name)
    groups: list[list[str]] = []
    constant = 0
    for candidates in by_kind.values():
        if len(candidates) < 2:
            continue
        for same in _identical(candidates, data):
            if data.constant(same[0]):
                constant += 1
            else:
                groups.append(same)
    return groups, constant


def _identical(names: list[str], data: Data) -> list[list[str]]:
    """Groups (of two or more) of ``names`` whose bytes are identical."""
    by_sample: dict[bytes, list[str]] = {}
    for name in names:
        by_sample.setdefault(data.sample(name), []).append(name)
    found: list[list[str]] = []
    for similar in by_sample.values():
        clusters: list[list[str]] = []
        for name in similar:
            home = next((c for c in clusters if data.equal(c[0], name)), None)
            if home is None:
                clusters.append([name])
            else:
                home.append(name)
        found += [cluster for cluster in clusters if len(cluster) > 1]
    return found


def _duplicate(
    group: list[str], entries: dict[str, Entry], ties: list[_Tie]
) -> Finding:
    entry = entries[group[0]]
    wasted = entry.nbytes * (len(group) - 1)
    tie = next((t for t in ties if set(group) <= set(t.names)), None)
    if tie is not None:
        group = sorted(group, key=tie.names.index)
    what = f"{entry.dtype} {list(entry.shape)}"
    if tie is None:
        message = (
            f"{_and(group)} hold identical bytes ({what}), stored {len(group)} times: "
            f"{_size(wasted)} wasted"
        )
        on_load = (
            "each name loads its own copy of the same values; a model that ties these "
            "names loads them into its one tensor, an untied model gets separate "
            "parameters that start equal"
        )
        fix = (
            "if the model ties them, store the tensor once: weightshare.save, "
            "safetensors.torch.save_model and save_pretrained do; if they are separate "
            "parameters that happen to be equal, nothing needs fixing"
        )
    else:
        message = (
            f"{_and(group)} are tied by {tie.by}, yet each is stored: {len(group)} "
            f"copies of {what}, {_size(wasted)} wasted"
        )
        others = [n for n in group if n != tie.first]
        if tie.source == "metadata":
            on_load = "weightshare.load checks that the copies agree and loads one"
            fix = "save with weightshare.save, which stores each tie group once"
        else:
            on_load = (
                f"from_pretrained ties them, since the copies agree ({CHECKED}): "
                "the copies only cost disk space and download time"
            )
            fix = (
                f"store the tensor once: delete {_and(others)} from the file, or save "
                "the tied model with save_pretrained, which stores it once"
            )
    return Finding("duplicate", tuple(group), wasted, message, on_load, fix)
