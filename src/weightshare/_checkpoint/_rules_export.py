"""The finding rules that apply only to exported files: ONNX models, GGUF files.

Called from :func:`._rules.findings` (and its ``_duplicate``); the readers
(:mod:`._onnx`, :mod:`._gguf`) find the transposed pairs and the architecture.
"""

from __future__ import annotations

from ._contents import Contents, Entry
from ._gguf import EMBEDDING, OUTPUT
from ._report import Finding, and_list, size

__all__ = ["exported_duplicate", "gguf_duplicate", "output_missing", "transposed"]


def output_missing(contents: Contents) -> list[Finding]:
    """A GGUF file without the output layer its architecture requires."""
    gguf = contents.gguf
    if gguf is None or gguf.ties != "requires output" or OUTPUT in contents.entries:
        return []
    return [
        Finding(
            "output-missing",
            (OUTPUT,),
            0,
            f"the file has no {OUTPUT}, and llama.cpp's {gguf.architecture!r} loader "
            f"requires it (it does not fall back to {EMBEDDING})",
            f"llama.cpp refuses to load the model: missing tensor '{OUTPUT}'",
            f"convert again writing {OUTPUT} (for a tied model, a copy of {EMBEDDING})",
        )
    ]


def transposed(pair: list[str], entries: dict[str, Entry]) -> Finding:
    first, second = (entries[name] for name in pair)
    return Finding(
        "transposed",
        tuple(pair),
        second.nbytes,
        f"{second.name} ({second.dtype} {list(second.shape)}) is the transpose of "
        f"{first.name} ({first.dtype} {list(first.shape)}): the matrix is stored "
        f"twice, {size(second.nbytes)} wasted; a search for identical bytes "
        "misses it",
        "the runtime loads both: the matrix takes its memory twice",
        "export so that the transpose stays an operation on one initializer: "
        "torch.onnx.export(..., dynamo=True) (the default exporter of torch 2.13) "
        "stores a tied matrix once, where dynamo=False folds the transpose into "
        "a second constant (pytorch/pytorch#108342)",
    )


def gguf_duplicate(contents: Contents, what: str, wasted: int) -> Finding:
    """A GGUF output layer stored as a copy where the loader would use the embedding."""
    arch = contents.gguf.architecture if contents.gguf else ""
    return Finding(
        "duplicate",
        (EMBEDDING, OUTPUT),
        wasted,
        f"{OUTPUT} is an exact copy of {EMBEDDING} ({what}): {size(wasted)} wasted",
        f"llama.cpp loads both, so the matrix takes its memory twice; without "
        f"{OUTPUT}, its {arch!r} loader uses {EMBEDDING} as the output layer",
        f"convert without {OUTPUT}: a tied model stores the matrix once, as "
        f"{EMBEDDING}",
    )


def exported_duplicate(
    group: list[str], contents: Contents, what: str, wasted: int
) -> Finding:
    """Identical tensors stored apart in an ONNX or GGUF file."""
    message = (
        f"{and_list(group)} hold identical bytes ({what}), stored {len(group)} "
        f"times: {size(wasted)} wasted"
    )
    if contents.kind == "onnx":
        on_load = "the runtime loads each copy: the tensor takes its memory twice"
        fix = (
            "if they are one tied weight, export so that it stays one initializer "
            "(torch.onnx.export(..., dynamo=True) stores a tied matrix once on torch "
            "2.13), or point every use to one initializer and delete the others"
        )
    else:
        on_load = "llama.cpp loads each copy: the tensor takes its memory twice"
        fix = (
            f"if this is the output layer of a tied model and llama.cpp's loader for "
            f"this architecture falls back to {EMBEDDING} (it decides per "
            f"architecture), convert without {OUTPUT}; otherwise the copy is needed"
        )
    return Finding("duplicate", tuple(group), wasted, message, on_load, fix)
