"""The hooks page's one-rank DDP run ends every time, not only most times.

Its ``ddp_backward`` makes a gloo process group in the page's own process. A DDP
model freed after that group is destroyed can freeze the process (see the comment
on the page), so the page frees the model first. A freeze is a matter of timing:
this test runs the function many times, in a process of its own with a time limit,
so that a page that freed the model late would fail here rather than hang a build.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PAGE = (
    Path(__file__).resolve().parents[2]
    / "examples"
    / "fix_train"
    / "plot_hooks_checkpointing.py"
)
RUNS = 150  # with the model freed late, a loop this long froze in 7 of 8 tries

SCRIPT = f"""
import contextlib, io, sys
page = {{"__name__": "__page__"}}
with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(open({str(PAGE)!r}).read(), {str(PAGE)!r}, "exec"), page)
errors = set()
for _ in range({RUNS}):
    for reentrant in (None, False, True):
        errors.add((reentrant, page["ddp_backward"](reentrant)))
print(sorted(errors, key=str))
"""


def test_ddp_backward_ends_every_time() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=90,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{RUNS} calls of the hooks page's ddp_backward did not end in 90 s: "
            "does the page still free the DDP model before destroying the group?"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == (
        "[(False, None), (None, None), "
        "(True, 'Expected to mark a variable ready only once')]"
    )
