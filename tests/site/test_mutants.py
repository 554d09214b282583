"""Every gallery page's doctests catch the mistakes the page is about.

A page that says "the tie holds" proves nothing if its doctests would pass with the tie
broken. For each page, ``tests/site/mutants/<page stem>.toml`` lists breaking edits of
the page's own code, each the mistake the page teaches (the tie made a copy, the fix
removed, gradient sync bypassed), as ``[[edit]]`` tables::

    [[edit]]
    name = "the tie made a copy"
    old = "fc2.weight = fc1.weight"    # occurs exactly once in the page
    new = "fc2.weight = nn.Parameter(fc1.weight.detach().clone())"

This test applies each edit to a copy of the page and runs the copy the way ``make
doctest`` runs a page (``docs/_ext/gallery_doctest.py``): its code cells and the
doctests of its text, in page order, in one namespace, with conf.py's
``doctest_global_setup`` first and Sphinx's default doctest flags. An edit is
*caught* when a doctest on the page fails; a crash of a code cell does not count,
unless the edit says ``crash = "why the page's point is that it fails"``. The page
unchanged must pass every doctest, so a catch is the edit's doing and not this
runner's. Pages run two at a time, each in a forked process with one thread (as the
download tests run them); the table of edits and what caught each is printed and
written to ``_build/mutants.md`` (``make mutants`` shows it).
"""

from __future__ import annotations

import contextlib
import doctest
import io
import multiprocessing
import os
import sys
import tempfile
import time
import tomllib
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MUTANTS = Path(__file__).resolve().parent / "mutants"
REPORT = ROOT / "_build" / "mutants.md"
#: Sphinx's ``doctest_default_flags``, which conf.py keeps.
FLAGS = (
    doctest.DONT_ACCEPT_TRUE_FOR_1 | doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL
)
PARALLEL = 2
TIMEOUT = 300.0


def pages() -> list[Path]:
    """Every gallery page, as sphinx-gallery finds them (``/plot_``)."""
    return sorted(EXAMPLES.glob("*/plot_*.py"))


@dataclass(frozen=True)
class Edit:
    page: Path
    name: str
    old: str
    new: str
    crash: str | None = None

    @property
    def label(self) -> str:
        return f"{self.page.stem}: {self.name}"


def load_edits(page: Path) -> list[Edit]:
    """The breaking edits listed for ``page``; an error names what is wrong."""
    path = MUTANTS / f"{page.stem}.toml"
    if not path.is_file():
        raise AssertionError(f"{page.relative_to(ROOT)} has no list of edits: {path}")
    tables = tomllib.loads(path.read_text()).get("edit", [])
    edits = []
    for n, table in enumerate(tables, 1):
        unknown = set(table) - {"name", "old", "new", "crash"}
        if unknown or not {"name", "old", "new"} <= set(table):
            raise AssertionError(
                f"{path.name}, edit {n}: needs name, old and new (and may have "
                f"crash); has {sorted(table)}"
            )
        edits.append(
            Edit(page, table["name"], table["old"], table["new"], table.get("crash"))
        )
    return edits


def apply(edit: Edit) -> str:
    text = edit.page.read_text()
    count = text.count(edit.old)
    if count != 1:
        raise AssertionError(
            f"{edit.label}: 'old' must occur once in {edit.page.name}, found {count} "
            f"times: {edit.old!r}"
        )
    if edit.new == edit.old:
        raise AssertionError(f"{edit.label}: 'new' is the same as 'old'")
    return text.replace(edit.old, edit.new)


@dataclass
class Outcome:
    """What running a page gave: ``passed``, ``caught`` (a doctest failed) or
    ``crashed`` (a code cell raised), with where and what."""

    status: str
    where: str = ""
    detail: str = ""
    seconds: float = 0.0
    doctests: int = 0


def _steps(path: Path) -> list[tuple[str, str, int]]:
    """The page's blocks in order: ``("code" | "text", content, first line)``."""
    from sphinx_gallery.py_source_parser import split_code_and_text_blocks

    _, blocks = split_code_and_text_blocks(str(path))
    return [(block.type, block.content, block.lineno) for block in blocks]


def run_page(path: Path) -> Outcome:
    """Run the page at ``path`` as ``make doctest`` does; stop at the first failure."""
    import gallery_doctest  # docs/_ext, on sys.path through tests/conftest.py

    sys.path.insert(0, str(ROOT))
    import conf

    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    exec(conf.doctest_global_setup, namespace)
    parser, examples_run = doctest.DocTestParser(), 0
    for kind, content, line in _steps(path):
        if kind == "code":
            try:
                gallery_doctest.run_cell(content, str(path), namespace)
            except BaseException as err:
                frame = traceback.extract_tb(err.__traceback__)[-1]
                where = f"cell at line {line} (raised at line {frame.lineno})"
                first = (str(err).splitlines() or [""])[0]
                detail = f"{type(err).__name__}: {first[:200]}"
                return Outcome("crashed", where, detail, doctests=examples_run)
            continue
        examples = parser.get_examples(content)
        if not examples:
            continue
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        for example in examples:
            single = doctest.DocTest(
                [example], namespace, path.stem, str(path), line, None
            )
            # DocTest copies its globals; share the page's, as Sphinx's builder does,
            # so a name assigned in one ``>>>`` line is there for the next.
            single.globs = namespace
            result = runner.run(single, out=out.write, clear_globs=False)
            examples_run += 1
            if result.failed:
                source = example.source.strip().splitlines()[0]
                where = f">>> {source} (line {line + example.lineno})"
                got = out.getvalue().strip().splitlines()
                return Outcome(
                    "caught", where, " | ".join(got[-3:])[:300], doctests=examples_run
                )
    return Outcome("passed", doctests=examples_run)


def _child(text: str, name: str, send: Connection) -> None:
    """In a forked process: run the page text written to a scratch folder."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        path = Path(folder) / name
        path.write_text(text)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                outcome = run_page(path)
        except BaseException as err:
            outcome = Outcome("crashed", "runner", f"{type(err).__name__}: {err}")
    outcome.seconds = time.perf_counter() - start
    send.send(outcome)
    send.close()


def run_all(jobs: list[tuple[str, str, str]]) -> dict[str, Outcome]:
    """Run ``(key, page text, file name)`` jobs, ``PARALLEL`` at a time, each forked."""
    context = multiprocessing.get_context("fork")
    pending, running, results = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < PARALLEL:
            key, text, name = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(text, name, send))
            process.start()
            send.close()
            running.append((key, process, receive, time.monotonic()))
        time.sleep(0.05)
        for job in list(running):
            key, process, receive, started = job
            if receive.poll():
                try:
                    results[key] = receive.recv()
                except EOFError:
                    results[key] = Outcome("crashed", "runner", "no result")
            elif not process.is_alive():
                results[key] = Outcome(
                    "crashed", "runner", f"process died ({process.exitcode})"
                )
            elif time.monotonic() - started > TIMEOUT:
                process.kill()
                results[key] = Outcome("crashed", "runner", f"over {TIMEOUT:.0f} s")
            else:
                continue
            process.join()
            running.remove(job)
    return results


def test_every_page_lists_at_least_two_breaking_edits() -> None:
    found = pages()
    assert found, "no gallery page found"
    problems = []
    for page in found:
        try:
            edits = load_edits(page)
            texts = [c for kind, c, _ in _steps(page) if kind == "text"]
            for edit in edits:
                apply(edit)
                # an edit of the prose (a doctest's expected output) is caught by
                # construction; the edits break the page's code
                if any(edit.old in text for text in texts):
                    problems.append(f"{edit.label}: 'old' is in the page's text")
        except AssertionError as err:
            problems.append(str(err))
            continue
        if len(edits) < 2:
            problems.append(f"{page.name}: {len(edits)} edit(s), at least 2 needed")
    stale = {p.stem for p in MUTANTS.glob("*.toml")} - {p.stem for p in found}
    problems += [f"mutants/{name}.toml names no page" for name in sorted(stale)]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_each_breaking_edit_fails_a_doctest_on_its_page() -> None:
    import torch  # noqa: F401 - imported once here, so every forked page skips it

    edits = [edit for page in pages() for edit in load_edits(page)]
    jobs = [
        (f"{page.stem}: (unchanged)", page.read_text(), page.name) for page in pages()
    ]
    jobs += [(edit.label, apply(edit), edit.page.name) for edit in edits]
    results = run_all(jobs)
    rows, failures = [], []
    for page in pages():
        base = results[f"{page.stem}: (unchanged)"]
        if base.status != "passed":
            failures.append(
                f"{page.name} unchanged: {base.status} at {base.where}: {base.detail}"
            )
        elif base.doctests == 0:
            failures.append(f"{page.name} has no doctest")
        rows.append(
            f"| {page.stem} | (unchanged) | {base.status}, "
            f"{base.doctests} doctests | {base.seconds:.1f} |"
        )
        for edit in (e for e in edits if e.page == page):
            got = results[edit.label]
            ok = got.status == "caught" or (got.status == "crashed" and edit.crash)
            if not ok:
                failures.append(f"{edit.label}: {got.status} {got.where} {got.detail}")
            what = got.where if got.status != "passed" else "nothing caught it"
            rows.append(
                f"| {page.stem} | {edit.name} | {got.status}: {what} | "
                f"{got.seconds:.1f} |"
            )
    table = "\n".join(
        ["| page | edit | outcome | s |", "| --- | --- | --- | --- |", *rows]
    )
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(table + "\n")
    print("\n" + table)
    assert not failures, "\n".join(failures) + "\n\n" + table
