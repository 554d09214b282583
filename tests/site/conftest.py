"""Fixtures shared by the tests that use the built site (browser, downloads, docs).

The site is built once per session with the Makefile's own `make html` (a no-op when
it is up to date) and served from `_build/html` on a free localhost port. `make test`
runs two pytest workers: each `make` here holds a lock on `_build/`, so that two
Sphinx builds (which share `_build/doctrees`) never run at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
LOCK = ROOT / "_build" / ".make.lock"
#: Not a test module: the notebook runner, run with the notebook environment's Python
#: (it imports nbclient, which the project's own environment lacks).
collect_ignore = ["run_notebooks.py"]
#: The environment of a reader's shell: without the one thread per worker that `make
#: test` sets, so that the doctest build prints what `make html` printed on the pages.
READERS_ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the lock on `_build/` that every worker's `make` takes."""
    LOCK.parent.mkdir(exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _signal_and_read(
    process: subprocess.Popen[str], sig: signal.Signals
) -> tuple[str, str] | None:
    """Send ``sig`` to ``process``'s group; its output, or None if not done in 30 s."""
    os.killpg(process.pid, sig)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return None


def _make(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``make ARGS``; past ``timeout`` seconds, fail with where it was stuck.

    The build runs in a process group of its own with Python's fault handler on, so
    that on a timeout a SIGABRT to the group makes every Python process in it (the
    Sphinx build, a page's ranks) print its threads' stacks before it ends.
    """
    command = ["make", "--no-print-directory", *args]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env={**READERS_ENV, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = (
                _signal_and_read(process, signal.SIGABRT)
                or _signal_and_read(process, signal.SIGKILL)
                or (
                    "",
                    "(its output was not read: a process that left its process "
                    "group kept the pipes open)",
                )
            )
            stacks = "\n".join(  # less the long lists of loaded extension modules
                line
                for line in stderr.splitlines()
                if not re.search(r"Extension modules:|\(total: \d+\)$", line)
            )
            pytest.fail(
                f"`make {' '.join(args)}` had not ended after {timeout:.0f} s and was "
                "stopped with SIGABRT. The last lines it printed, then the stacks "
                f"Python's fault handler printed:\n{stdout[-2000:]}\n{stacks[-8000:]}"
            )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def make(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Run a Makefile target in the repository, as a reader would, one at a time
    across the pytest workers."""
    with _locked():
        return _make(list(args), timeout)


@pytest.fixture(scope="session")
def built_site() -> Path:
    """`_build/html`, after a `make html` that passed with zero warnings.

    Built once per test run: with two workers, the second worker's `make html`
    (even one with nothing to do) would rewrite the index and search pages while
    the first worker's tests read them, so the first build's result is kept.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    stamp = ROOT / "_build" / ".built-for-run"
    with _locked():
        if run and stamp.is_file() and stamp.read_text().startswith(run + "\n"):
            failure = stamp.read_text().removeprefix(run + "\n")
        else:
            result = _make(["html"], timeout=1200)
            failure = ""
            if result.returncode != 0 or "WARNING" in result.stderr:
                failure = result.stdout[-3000:] + result.stderr[-3000:] or "failed"
            stamp.write_text(f"{run}\n{failure}")
    assert not failure, failure
    return HTML


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def site_url(built_site: Path) -> Iterator[str]:
    """The built site served over HTTP on localhost, as `http://127.0.0.1:PORT/`."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
