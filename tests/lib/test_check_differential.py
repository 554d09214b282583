"""``weightshare check`` agrees with ``from_pretrained`` on a generated corpus.

The folders come from :mod:`hf_corpus` (tiny models of 36 architectures, clean and
damaged). For each, the truth is what ``from_pretrained(...,
output_loading_info=True)`` on the pinned transformers does: it stops (a size
mismatch, or a file it cannot read), leaves keys MISSING, or loads a tie that the
architecture declares untied; and whether the files hold identical bytes twice.
``check`` must report exactly these outcomes (its exit status 2, or findings of
the matching kinds) and nothing else. The whole corpus is slow; ``make check``
runs two architectures. Run as a script to print the agreement table.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import safetensors.torch
import torch

import weightshare as ws

sys.path.insert(0, str(Path(__file__).parent))
from hf_corpus import ARCHITECTURES, VARIANTS, Folder, generate

LABELS = {
    "model-shape": "size-mismatch",
    "tie-shape": "size-mismatch",
    "tie-missing": "missing",
    "untied-missing": "missing",
    "missing": "missing",
    "tie-differs": "untied",
    "duplicate": "duplicate",
}
FAST = ["gpt2", "gpt-neox"]
FAST_VARIANTS = ("differing", "wrong-shape-embedding", "untied-missing-head")
FAST_FOLDERS = 4  # gpt-neox unties by default: no tied pair to damage


def truth(transformers: ModuleType, folder: Folder) -> set[str]:
    """What from_pretrained does with the folder, as outcome labels."""
    cls = getattr(transformers, folder.model_class)
    transformers.utils.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(folder.path, output_loading_info=True)
    except RuntimeError as err:
        if "size mismatch" in str(err) or "ignore_mismatched_sizes" in str(err):
            return {"size-mismatch"}
        return {"refused"}
    except Exception:
        return {"refused"}
    labels = set()
    if info["missing_keys"]:
        labels.add("missing")
    loaded = ws.shared_groups(model)
    with torch.device("meta"):
        fresh = cls(model.config)
    for group in ws.shared_groups(fresh):
        if not any(set(group) <= set(other) for other in loaded):
            labels.add("untied")
    if _stored_twice(folder.path):
        labels.add("duplicate")
    return labels


def _stored_twice(path: Path) -> bool:
    """Two tensors of identical bytes, not one storage and not all one value."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(safetensors.torch.load_file(str(file)))
    for file in sorted(path.glob("*.bin")):
        tensors.update(torch.load(file, weights_only=True))
    seen: dict[tuple[object, ...], list[torch.Tensor]] = {}
    for tensor in tensors.values():
        flat = tensor.contiguous().reshape(-1)
        raw = flat.view(torch.uint8)
        if raw.numel() == 0 or bool((flat == flat[0]).all()):
            continue
        key = (tensor.dtype, tuple(tensor.shape), bytes(raw.tolist()))
        same = seen.setdefault(key, [])
        ptr = tensor.untyped_storage().data_ptr()
        if any(other.untyped_storage().data_ptr() != ptr for other in same):
            return True
        same.append(tensor)
    return False


def verdict(check: Any, folder: Folder) -> set[str]:
    """What check says, as the same labels."""
    try:
        report = check(folder.path)
    except ws.CheckpointError:
        return {"refused"}
    return {LABELS.get(finding.kind, finding.kind) for finding in report.findings}


def agree(expected: set[str], said: set[str]) -> bool:
    if expected == {"size-mismatch"}:  # loading stops: nothing after it matters
        return "size-mismatch" in said
    return expected == said


def compare(
    transformers: ModuleType,
    root: Path,
    check: Any,
    archs: list[str] | None,
    variants: tuple[str, ...],
) -> list[tuple[str, set[str], set[str]]]:
    rows = []
    for folder in generate(transformers, root, archs, variants):
        rows.append((folder.name, truth(transformers, folder), verdict(check, folder)))
    return rows


@pytest.fixture(scope="module")
def transformers() -> ModuleType:
    return pytest.importorskip("transformers")


def test_check_agrees_with_from_pretrained_fast(
    transformers: ModuleType, tmp_path: Path
) -> None:
    rows = compare(transformers, tmp_path, ws.check, FAST, FAST_VARIANTS)
    assert len(rows) == FAST_FOLDERS
    wrong = [row for row in rows if not agree(row[1], row[2])]
    assert not wrong, wrong
    outcomes = {label for _, expected, _ in rows for label in expected}
    assert {"size-mismatch", "untied", "missing"} <= outcomes  # not all clean


@pytest.mark.slow
def test_check_agrees_with_from_pretrained_on_the_whole_corpus(
    transformers: ModuleType, tmp_path: Path
) -> None:
    rows = compare(transformers, tmp_path, ws.check, None, VARIANTS)
    assert len({name.split("--")[0] for name, _, _ in rows}) >= 25
    wrong = [row for row in rows if not agree(row[1], row[2])]
    assert not wrong, f"{len(wrong)} of {len(rows)} disagree: {wrong}"


def main() -> None:
    """Print the agreement of the ``weightshare.check`` on ``sys.path``."""
    import tempfile

    import transformers as library

    logging.disable(logging.WARNING)
    archs = sys.argv[1:] or None  # the architectures to generate (default: all)
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(library, Path(tmp), ws.check, archs, VARIANTS)
    wrong = [row for row in rows if not agree(row[1], row[2])]
    for name, expected, said in wrong:
        print(f"{name}: from_pretrained {sorted(expected)}, check {sorted(said)}")
    archs = len({name.split("--")[0] for name, _, _ in rows})
    print(
        f"{len(rows) - len(wrong)} of {len(rows)} folders agree ({archs} architectures)"
    )


if __name__ == "__main__":
    assert ARCHITECTURES
    main()
