"""The hooks page's one-rank DDP run ends every time, not only most times.

Its ``ddp_backward`` makes a gloo process group in the page's own process. A DDP
model freed after that group is destroyed can freeze the process (see the comment
on the page), so the page frees the model first, and collects it when a reference
cycle keeps it. A freeze is a matter of timing: this test runs the function many
times, in a process of its own, so that a page that freed the model late would fail
here rather than hang a build, and checks that no model is alive when its group is
destroyed, which fails the old page without depending on timing. Each call has a
time limit of its own, far above the few milliseconds it takes, so that a loaded
machine does not fail the test; a call past it prints every thread's stack.
"""

from __future__ import annotations

import os
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
CALL_LIMIT = 60  # seconds; a call takes about 15 ms

SCRIPT = f"""
import contextlib, faulthandler, gc, io, sys, weakref
page = {{"__name__": "__page__"}}
with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(open({str(PAGE)!r}).read(), {str(PAGE)!r}, "exec"), page)

# Whether a DDP model is still alive when its group is destroyed: a freeze needs
# bad timing as well, this needs none. ``cycle`` keeps each model in a reference
# cycle, as one whose construction imports torch._dynamo is.
made, late, cycle = [], [], False
class DDP(page["DDP"]):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(weakref.ref(self))
        if cycle:
            self.__dict__["_cycle"] = self
page["DDP"] = DDP
dist = page["dist"]
destroy = dist.destroy_process_group
def checked_destroy(*args, **kwargs):
    late.extend(model for model in made if model() is not None)
    made.clear()
    return destroy(*args, **kwargs)
dist.destroy_process_group = checked_destroy

def call(reentrant):
    faulthandler.dump_traceback_later({CALL_LIMIT}, exit=True)  # stacks, then exit 1
    try:
        return page["ddp_backward"](reentrant)
    finally:
        faulthandler.cancel_dump_traceback_later()

errors = set()
for _ in range({RUNS}):
    for reentrant in (None, False, True):
        errors.add((reentrant, call(reentrant)))
print(sorted(errors, key=str))
cycle = True
gc.disable()
for reentrant in (None, False, True):
    call(reentrant)
print(len(late), "models alive when their group was destroyed")
"""


def test_ddp_backward_ends_every_time() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=600,  # a backstop: each call has CALL_LIMIT
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("running the hooks page's ddp_backward did not end in 600 s")
    assert done.returncode == 0, (
        f"a call of the hooks page's ddp_backward did not end in {CALL_LIMIT} s "
        "(does the page still free the DDP model before destroying the group?); "
        f"the stacks:\n{done.stderr[-6000:]}"
        if "Timeout (0:" in done.stderr
        else done.stderr[-3000:]
    )
    assert done.stdout.splitlines() == [
        "[(False, None), (None, None), "
        "(True, 'Expected to mark a variable ready only once')]",
        "0 models alive when their group was destroyed",
    ]
