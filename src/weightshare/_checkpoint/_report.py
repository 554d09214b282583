"""The report of :func:`weightshare.check`: its types, its text and its JSON."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckReport", "Finding", "TensorInfo", "TieInfo", "and_list", "size"]

KINDS = {
    "safetensors": "safetensors file",
    "torch": "torch checkpoint",
    "huggingface": "Hugging Face folder",
    "onnx": "ONNX model",
    "gguf": "GGUF file",
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
        :func:`weightshare.save`), ``"save_model"`` (the dropped names that
        ``safetensors.torch.save_model`` records), ``"storage"`` (one storage in
        a torch checkpoint), ``"views"`` (different views of one storage),
        ``"architecture"`` (the transformers model built from ``config.json``) or
        ``"config"`` (the flag ``tie_word_embeddings``, names assumed) or
        ``"gguf"`` (a GGUF architecture whose llama.cpp loader uses
        ``token_embd.weight`` when ``output.weight`` is absent).
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
        ``"tie-shape"`` (a tie recorded in the file whose saved tensors differ in
        shape or dtype), ``"model-shape"`` (a tensor whose shape differs from the
        model built from ``config.json``), ``"tie-missing"`` (a tie none of whose
        names is in the file), ``"untied-missing"`` (the config unties the
        output layer, which the file lacks), ``"missing"`` (other tensors of
        the model that the file lacks and no tie fills), ``"bad-metadata"``
        (the groups :func:`weightshare.save` records cannot be read),
        ``"transposed"`` (an ONNX initializer that is another one transposed)
        or ``"output-missing"`` (a GGUF file without the ``output.weight`` its
        architecture requires).
    names : tuple of str
        The tensors concerned.
    bytes : int
        Bytes stored more than once (``"duplicate"``, ``"transposed"``); 0 for
        the other kinds.
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
        ``"safetensors"``, ``"torch"``, ``"huggingface"`` (a model folder),
        ``"onnx"`` or ``"gguf"``.
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
        return f"{text}, {size(self.stored_bytes)}" + (f", {kinds}" if dtypes else "")


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


def size(nbytes: int) -> str:
    """Bytes in decimal units: ``160 B``, ``1.6 kB``, ``154.4 MB``."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{nbytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError(unit)  # pragma: no cover - the loop always returns


def _describe(tensor: TensorInfo) -> str:
    return f"{tensor.name} {tensor.dtype} {list(tensor.shape)} {size(tensor.nbytes)}"


def _tie_line(tie: TieInfo) -> str:
    if tie.source == "storage":
        return f"{' = '.join(tie.names)} (one storage in the file)"
    if tie.source == "gguf":
        first, second = tie.names
        saved = "saved" if second in tie.saved else "absent"
        return f"{second} {saved}; llama.cpp uses {first} in its place when absent"
    if tie.source == "views":
        return f"{and_list(tie.names)} are different views of one storage in the file"
    where = {
        "metadata": "recorded by weightshare.save",
        "save_model": "recorded by safetensors.torch.save_model",
        "architecture": "declared by the architecture",
        "config": "assumed from the config flag",
        "gguf": "llama.cpp falls back to the first",
    }[tie.source]
    if not tie.saved:
        saved = "none saved"
    elif len(tie.saved) == 1:
        saved = f"saved once, as {tie.saved[0]}"
    else:
        saved = f"saved as {and_list(tie.saved)}"
    return f"{' = '.join(tie.names)} ({where}; {saved})"


def and_list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
