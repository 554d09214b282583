"""The ``weightshare`` command line: ``weightshare check PATH [PATH ...] [--json]``.

Exit status: 0 when every checkpoint is clean, 1 when there are findings, 2 when an
input cannot be read (then one line on stderr names the file and the problem).
Importing this module imports neither torch nor transformers: a safetensors file is
checked without them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

PROG = "weightshare"
EPILOG = """\
exit status: 0 clean, 1 findings, 2 an input cannot be read (one line on stderr
names the file and the problem)"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Inspect tied weights (weight sharing) in PyTorch."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="check a checkpoint's ties before loading it",
        description=(
            "Check checkpoints on disk without loading the model: tensors, ties "
            "(recorded by weightshare.save, shared torch storage, or declared by a "
            "Hugging Face config) and what loading will do to them."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a .safetensors file, a torch checkpoint (.pt, .pth, .bin, .ckpt), an "
        "ONNX model (.onnx), a GGUF file (.gguf) or a Hugging Face model folder",
    )
    check.add_argument(
        "--json", action="store_true", help="print one JSON report instead of text"
    )
    check.add_argument(
        "--no-transformers",
        action="store_true",
        help="for a folder, read only the config flag tie_word_embeddings instead "
        "of building the model with transformers",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every checkpoint is clean, 1 when there are findings, 2 when an
        input cannot be read. Invalid arguments exit with status 2 (argparse).

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from safetensors.torch import save_file
    >>> from weightshare._checkpoint._cli import main
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.safetensors")
    ...     save_file({"emb.weight": torch.ones(2, 2)}, path)
    ...     status = main(["check", path])  # doctest: +ELLIPSIS
    /.../model.safetensors: safetensors file (model.safetensors)
    ...
      findings: none
    >>> status
    0
    """
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:
        # the reader closed the pipe (``weightshare check ... | head``): stop
        # quietly, and keep Python from reporting the error again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a process that SIGPIPE ended (128 + 13)
    except OSError as err:  # standard output cannot be written (a full disk)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # drop what is left in the buffer
        reason = err.strerror.lower() if err.strerror else str(err)
        print(
            f"{PROG} check: error: cannot write the report to standard output "
            f"({reason}); redirect it to a file or pipe that can be written",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace) -> int:
    from .._errors import CheckpointError
    from ._check import check

    reports = []
    errors = []
    for number, path in enumerate(args.paths):
        try:
            report = check(path, use_transformers=not args.no_transformers)
        except CheckpointError as err:
            errors.append({"path": path, "problem": str(err)})
            print(f"{PROG} check: error: {err}", file=sys.stderr, flush=True)
            continue
        except Exception as err:  # a bug here: still one line, never a traceback
            problem = f"{path}: internal error ({type(err).__name__}: {err})"
            errors.append({"path": path, "problem": problem})
            print(f"{PROG} check: error: {problem}", file=sys.stderr, flush=True)
            continue
        reports.append(report)
        if not args.json:
            print(("\n" if number else "") + report.format(), flush=True)
    status = 2 if errors else max((r.status for r in reports), default=0)
    if args.json:
        document = {
            "schema": 1,
            "status": status,
            "reports": [report.to_dict() for report in reports],
            "errors": errors,
        }
        print(json.dumps(document, indent=2), flush=True)
    return status
