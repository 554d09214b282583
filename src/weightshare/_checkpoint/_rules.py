"""The finding rules of :func:`weightshare.check`: what is wrong, what loading does.

Each rule is a function from what was read (:class:`._contents.Contents` and the
folder's :class:`._hf.Declared`) to :class:`weightshare.Finding` objects;
:func:`findings` runs them in order. A new kind of finding is one more function
here, called from :func:`findings`, and one more line in ``Finding``'s docstring;
the rules that apply only to exported files (ONNX, GGUF) are in
:mod:`._rules_export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._contents import Contents, Data, Entry
from ._gguf import EMBEDDING, OUTPUT
from ._hf import Declared
from ._report import Finding, and_list, size
from ._rules_export import (
    exported_duplicate,
    gguf_duplicate,
    output_missing,
    transposed,
)

__all__ = ["CHECKED", "Tie", "findings", "ties"]

CHECKED = "checked on transformers 5.23"


@dataclass
class Tie:
    """A tie group while it is checked."""

    names: list[str]
    source: str
    by: str  # how the tie is declared, for messages
    first: str = ""  # the name loading fills the others from
    saved: list[str] = field(default_factory=list)


def ties(contents: Contents, declared: Declared | None) -> list[Tie]:
    """Every tie group, from every source, with the names the file holds."""
    found = [
        Tie(list(group), "metadata", "the groups recorded by weightshare.save")
        for group in contents.recorded
    ]
    kept: dict[str, list[str]] = {}
    for gone, name in contents.dropped.items():
        kept.setdefault(name, [name]).append(gone)
    by = "the names recorded by safetensors.torch.save_model"
    found += [Tie(group, "save_model", by, group[0]) for group in kept.values()]
    found += [Tie(group, "storage", "one storage") for group in contents.aliases]
    found += [Tie(group, "views", "one storage") for group in contents.views]
    gguf = contents.gguf
    if gguf is not None and gguf.ties == "falls back" and EMBEDDING in contents.entries:
        by = (
            f"llama.cpp's {gguf.architecture!r} loader (it uses {EMBEDDING} as the "
            f"output layer when {OUTPUT} is absent)"
        )
        found.append(Tie([EMBEDDING, OUTPUT], "gguf", by, EMBEDDING))
    if declared is not None:
        by = _declared_by(declared)
        for index, group in enumerate(declared.groups):
            first = declared.sources.get(index, group[0])
            found.append(Tie(group, declared.source, by, first))
    for tie in found:
        tie.saved = [name for name in tie.names if name in contents.entries]
        tie.first = tie.first or tie.names[0]
    return found


def _declared_by(declared: Declared) -> str:
    if declared.source != "architecture":
        return "config.json (tie_word_embeddings=true)"
    if declared.flag and declared.flag_in_file is False:
        return (
            "the architecture (transformers sets tie_word_embeddings=true for it, "
            "whatever config.json says; config.json says false)"
        )
    return "the architecture" + " (config.json: tie_word_embeddings=true)" * bool(
        declared.flag_in_file
    )


def findings(
    contents: Contents, declared: Declared | None, found: list[Tie]
) -> tuple[list[Finding], int]:
    """Every finding, and the number of constant groups left out of duplicates."""
    out = [_bad_metadata(problem) for problem in contents.bad_metadata]
    out += _model_shapes(contents, declared)
    wrong = {name for finding in out for name in finding.names}
    for tie in found:
        out += _tie_findings(tie, contents, declared, wrong)
    for name in declared.untied_missing if declared else []:
        out.append(_untied_missing(name))
    if declared is not None and declared.missing:
        out.append(_missing(declared.missing))
    out += output_missing(contents)
    duplicates, constant = _duplicates(contents)
    if contents.gguf is not None and contents.gguf.ties == "requires output":
        pair = {EMBEDDING, OUTPUT}  # the copy is what the loader needs
        duplicates = [group for group in duplicates if set(group) != pair]
    out += [_duplicate(group, contents, found) for group in duplicates]
    out += [transposed(pair, contents.entries) for pair in contents.transposed]
    return out, constant


def _bad_metadata(problem: str) -> Finding:
    return Finding(
        "bad-metadata",
        (),
        0,
        f"{problem}: the file is valid safetensors, but its recorded tie groups "
        "cannot be read",
        "weightshare.load refuses the file with a CheckpointError; other loaders "
        "ignore the metadata and load the tensors untied",
        "save again from the model with weightshare.save",
    )


def _model_shapes(contents: Contents, declared: Declared | None) -> list[Finding]:
    """Tensors whose shape differs from the model's: from_pretrained stops."""
    model = declared.shapes if declared else {}
    out = []
    for name, entry in contents.entries.items():
        if name in model and entry.shape != model[name]:
            out.append(
                Finding(
                    "model-shape",
                    (name,),
                    0,
                    f"{name} is {list(entry.shape)} in the file, but the model built "
                    f"from config.json has {list(model[name])}",
                    f"from_pretrained ({CHECKED}) stops with a size-mismatch error "
                    f"for {name}",
                    "save again from the trained model, or fix config.json so that "
                    "it describes the saved model",
                )
            )
    return out


def _tie_findings(
    tie: Tie, contents: Contents, declared: Declared | None, wrong: set[str]
) -> list[Finding]:
    if tie.source in ("storage", "views", "gguf") or set(tie.saved) & wrong:
        return []
    entries = contents.entries
    if not tie.saved:
        return [_tie_missing(tie)]
    shapes = {entries[n].shape for n in tie.saved}
    if tie.source in ("architecture", "config") and len(shapes) == 1:
        # from_pretrained casts each tensor to the model's dtype, then compares
        first = tie.saved[0]
        dtypes = declared.dtypes if declared else {}
        dtype = dtypes.get(first, entries[first].dtype)
        differ = [
            n for n in tie.saved[1:] if not contents.data.loads_equal(first, n, dtype)
        ]
        return [_tie_differs(tie, first, differ, contents)] if differ else []
    kinds = {(entries[n].dtype, entries[n].shape) for n in tie.saved}
    if len(kinds) > 1:
        return [_tie_shape(tie, entries)]
    first = tie.saved[0]
    differ = [n for n in tie.saved[1:] if not contents.data.equal(first, n)]
    return [_tie_differs(tie, first, differ, contents)] if differ else []


def _tie_missing(tie: Tie) -> Finding:
    names = and_list(tie.names)
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


def _tie_shape(tie: Tie, entries: dict[str, Entry]) -> Finding:
    shapes = "; ".join(
        f"{n} {entries[n].dtype} {list(entries[n].shape)}" for n in tie.saved
    )
    message = (
        f"{and_list(tie.saved)} are tied by {tie.by}, but their shapes or dtypes "
        f"differ: {shapes}"
    )
    if tie.source == "save_model":
        on_load = "safetensors.torch.load_model fails: the tied parameter has one shape"
    elif tie.source == "config":
        on_load = (
            f"from_pretrained ({CHECKED}) stops with a size-mismatch error for the "
            "one whose shape differs from the model's"
        )
    else:
        on_load = (
            "weightshare.load refuses the file with a CheckpointError naming the keys "
            "and their shapes"
        )
    fix = "save again from the model with weightshare.save"
    return Finding("tie-shape", tuple(tie.saved), 0, message, on_load, fix)


def _tie_differs(
    tie: Tie, first: str, differ: list[str], contents: Contents
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
        f"{and_list(names)} are tied by {tie.by}, but the file holds different "
        f"values for them: {how}"
    )
    store_once = (
        "decide which values are right and save again from the model with "
        "weightshare.save, which stores each tie group once"
    )
    if tie.source == "metadata":
        on_load = (
            "weightshare.load refuses the file with a CheckpointError naming both "
            "keys and their difference"
        )
        fix = store_once
    elif tie.source == "save_model":
        on_load = (
            "safetensors.torch.load_model loads one of them into the tied parameter "
            "(which one depends on the model's parameter order)"
        )
        fix = store_once
    else:
        targets = [n for n in names if n != tie.first]
        on_load = (
            f"from_pretrained ({CHECKED}) logs a warning and does not tie them: each "
            "loads its own saved values, so the model is untied although its config "
            f"ties it; a later model.tie_weights() (resize_token_embeddings calls it) "
            f"overwrites {and_list(targets)} with {tie.first}"
        )
        fix = (
            f"decide which values are right and store them once, as {tie.first} "
            "(loading fills the tied names from it)"
        )
        if "whatever config.json says" not in tie.by:
            fix += (
                ", or set tie_word_embeddings to false in config.json if the model is "
                "meant to be untied"
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


def _missing(names: list[str]) -> Finding:
    shown = and_list(names[:5]) + (f" and {len(names) - 5} more" if names[5:] else "")
    return Finding(
        "missing",
        tuple(names),
        0,
        f"the model built from config.json has {shown}, which the file lacks and no "
        "tie fills",
        f"from_pretrained ({CHECKED}) initialises them randomly and lists them as "
        "MISSING in its load report",
        "save again from the trained model",
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


def _duplicate(group: list[str], contents: Contents, found: list[Tie]) -> Finding:
    entries = contents.entries
    entry = entries[group[0]]
    wasted = entry.nbytes * (len(group) - 1)
    tie = next((t for t in found if set(group) <= set(t.names)), None)
    if tie is not None:
        group = sorted(group, key=tie.names.index)
    what = f"{entry.dtype} {list(entry.shape)}"
    if tie is not None and tie.source == "gguf":
        return gguf_duplicate(contents, what, wasted)
    if tie is None and contents.kind in ("onnx", "gguf"):
        return exported_duplicate(group, contents, what, wasted)
    if tie is None:
        message = (
            f"{and_list(group)} hold identical bytes ({what}), stored {len(group)} "
            f"times: {size(wasted)} wasted"
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
            f"{and_list(group)} are tied by {tie.by}, yet each is stored: "
            f"{len(group)} copies of {what}, {size(wasted)} wasted"
        )
        others = [n for n in group if n != tie.first]
        if tie.source in ("metadata", "save_model"):
            on_load = "the copies are identical, so loading them is safe"
            fix = "save with weightshare.save, which stores each tie group once"
        else:
            on_load = (
                f"from_pretrained ties them, since the copies agree ({CHECKED}): "
                "the copies only cost disk space and download time"
            )
            fix = (
                f"store the tensor once: delete {and_list(others)} from the file, or "
                "save the tied model with save_pretrained, which stores it once"
            )
    return Finding("duplicate", tuple(group), wasted, message, on_load, fix)
