"""The gallery's downloads, run the way a reader runs them: no clone, a fresh venv.

Each gallery page offers its script, its notebook and the weightshare wheel, and says
how to run them (the "Run this example on your own machine" box). This test fetches
those files from the built site served on localhost, puts each page's notebook and the
wheel in an empty folder and executes the notebook in a new Jupyter kernel, in an
environment made with what the notebooks' first cells install (the pins) plus
Jupyter's kernel and nbclient.

Each page's box and its notebook's first cell must install exactly the pins of what
the page's script imports (conf.py's ``weightshare_import_requirements``); the runs
share one environment with all of them, since one per set of imports would cost
minutes of pip each. The script itself is not run a second time: it must be its
notebook's code, statement for statement, so the notebook's run, in a kernel (the
stricter of the two places), stands for it (see
``test_downloaded_script_is_its_notebooks_code``).

Making the environment costs a few minutes of pip, so it is kept in
`_build/download-envs/` and made again only when the notebooks' first cells change;
the wheel is reinstalled from the site on every run. The notebooks run two at a time,
one core each (``OMP_NUM_THREADS=1``), each in a kernel of its own.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

ENVS = ROOT / "_build" / "download-envs"
PAGES = sorted(
    p.relative_to(ROOT / "examples").with_suffix(".html").as_posix()
    for p in (ROOT / "examples").glob("*/plot_*.py")
)


class _Page(HTMLParser):
    """The download links and the run commands of a gallery page."""

    def __init__(self) -> None:
        super().__init__()
        self.downloads: list[str] = []
        self.commands = ""
        self._in_commands = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "a" and "download" in classes and found.get("href"):
            self.downloads.append(found["href"] or "")
        if tag == "div" and "ws-run-commands" in classes:
            self._in_commands = 1
        elif self._in_commands and tag == "div":
            self._in_commands += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in_commands and tag == "div":
            self._in_commands -= 1

    def handle_data(self, data: str) -> None:
        if self._in_commands:
            self.commands += data


def _fetch(url: str, dest: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as response:
        dest.write_bytes(response.read())
    return dest


def _page(site_url: str, page: str) -> tuple[dict[str, str], list[str]]:
    """The page's downloads by suffix (absolute URLs), and its command lines."""
    url = urljoin(site_url, "auto_examples/" + page)
    parser = _Page()
    with urllib.request.urlopen(url, timeout=30) as response:
        parser.feed(response.read().decode())
    downloads = {Path(href).suffix: urljoin(url, href) for href in parser.downloads}
    lines = [line for line in parser.commands.strip().splitlines() if line.strip()]
    return downloads, lines


def _clean_env() -> dict[str, str]:
    """This process's environment without its virtual environment in the way."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}
    }
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin
    )
    env["MPLBACKEND"] = "Agg"  # no window to show figures in
    # Two downloads run at a time (see _run_all), one core each.
    env["OMP_NUM_THREADS"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _bash(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _env(name: str, key: str, wheel: Path, make: str) -> Path:
    """The folder of a kept environment, made again by ``make`` when ``key`` changed.

    The wheel of this build is copied in; in a kept environment that has it
    installed, it is reinstalled (pip would skip it: the version number does not
    change when src/ does). A new environment gets it from the page's commands or
    the notebook's first cell, as a reader's does.
    """
    folder = ENVS / name
    stamp = folder / ".made-by"
    digest = hashlib.sha256(key.encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(wheel, folder)
        done = _bash(make, folder, timeout=1200)
        assert done.returncode == 0, (
            f"{make}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        stamp.write_text(digest)
        return folder
    shutil.copy(wheel, folder)
    python = folder / ".venv" / "bin" / "python"
    refresh = f"{python} -m pip install -q --force-reinstall --no-deps {wheel.name}"
    if (folder / ".venv" / "bin" / "pip").exists() and _installed(python):
        done = _bash(refresh, folder, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


def _installed(python: Path) -> bool:
    """Whether weightshare is installed in the environment of ``python``."""
    check = f"{python} -m pip show -q weightshare"
    return _bash(check, python.parent, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def downloads(site_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every page's script and notebook, and the wheel, fetched from the site."""
    folder = tmp_path_factory.mktemp("downloads")
    for page in PAGES:
        files, _ = _page(site_url, page)
        for suffix in (".py", ".ipynb", ".whl"):
            assert suffix in files, f"{page} offers no {suffix} download: {files}"
            _fetch(files[suffix], folder / Path(files[suffix]).name)
    return folder


def _expected_pins(script: Path) -> list[str]:
    """The pins the page's box should install: those of what its script imports."""
    sys.path.insert(0, str(ROOT))
    from gallery_downloads import page_requirements

    import conf

    return page_requirements(
        script.read_text(),
        conf.weightshare_run_requirements,
        conf.weightshare_import_requirements,
    )


@pytest.fixture(scope="module")
def setup_lines(site_url: str) -> dict[str, list[str]]:
    """The lines each page gives to set up its environment, by page."""
    setups = {}
    for page in PAGES:
        _, lines = _page(site_url, page)
        script = Path(page).with_suffix(".py").name
        assert lines[-1] == f"python {script}", lines
        setups[page] = lines[:-1]
    return setups


def _installs(lines: list[str]) -> list[str]:
    (install,) = [line for line in lines if line.startswith("pip install ")]
    return install.removeprefix("pip install ").split()


def test_every_page_offers_the_same_wheel_and_installs_what_it_imports(
    setup_lines: dict[str, list[str]], downloads: Path
) -> None:
    wheels = list(downloads.glob("*.whl"))
    assert len(wheels) == 1
    for page, lines in setup_lines.items():
        assert lines[0] == "python3 -m venv .venv"
        script = downloads / Path(page).with_suffix(".py").name
        assert _installs(lines) == [*_expected_pins(script), wheels[0].name], page
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    assert "weightshare/__init__.py" in names and "weightshare/py.typed" in names


def _run_all(
    jobs: dict[str, tuple[str, Path]], timeout: float
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each ``(bash script, folder)``, two at a time (two cores)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_bash, script, folder, timeout)
            for name, (script, folder) in jobs.items()
        }
        return {name: future.result() for name, future in futures.items()}


def _code_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _first_cell(notebook: Path) -> str:
    return _code_cells(notebook)[0]


def _unbound_names(module: ast.Module) -> set[str]:
    """Names the code reads but never binds and Python does not define: in a script
    they fail, in a notebook IPython may define them (``display``, ``_``, ``In``)."""
    bound = set(dir(builtins)) | {"__name__", "__doc__", "__file__"}
    for node in ast.walk(module):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return {
        n.id for n in ast.walk(module) if isinstance(n, ast.Name) and n.id not in bound
    }


@pytest.mark.parametrize("page", PAGES)
def test_downloaded_script_is_its_notebooks_code(page: str, downloads: Path) -> None:
    # The script is not run on its own: its notebook runs (below) in a fresh kernel,
    # a stricter place than ``python script.py`` (no ``__file__``, a kernel's argv,
    # no spawned workers that re-import ``__main__``). What a script adds is checked
    # here: it is the notebook's code, statement for statement (the module docstring
    # and the comments are the notebook's text cells), it compiles as a module, and
    # it reads no name it does not bind (IPython's ``display``, ``_``, ``In``). Two
    # things this leaves unchecked, which a run of the script would see: how the
    # process ends (nbclient shuts the kernel down, so a thread or a process group
    # that keeps a script from exiting goes unnoticed), and a library importing a
    # package that only Jupyter's own dependencies put in the environment (a page's
    # direct imports must each be pinned: see _expected_pins).
    script = downloads / Path(page).with_suffix(".py").name
    notebook = script.with_suffix(".ipynb")
    module = ast.parse(script.read_text(), filename=script.name)
    body = module.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    ):
        body = body[1:]  # the page's title and introduction: the first text cell
    cells = ast.parse("\n".join(_code_cells(notebook)[1:]), filename=notebook.name)
    assert [ast.dump(node) for node in body] == [ast.dump(n) for n in cells.body], page
    assert not _unbound_names(module), f"{script.name} reads {_unbound_names(module)}"
    compile(module, script.name, "exec")


@pytest.fixture(scope="module")
def notebook_env(downloads: Path) -> Path:
    """The environment of the notebooks: a reader's Jupyter (a kernel and nbclient)
    and what every notebook's first cell installs, made by running pip with exactly
    those words. A page's run box installs the same pins as its first cell (both are
    compared with what the page imports), so this also proves the boxes' ``pip
    install`` lines resolve."""
    notebooks = sorted(downloads.glob("*.ipynb"))
    wheel = next(downloads.glob("*.whl"))
    sys.path.insert(0, str(ROOT))
    from gallery_downloads import notebook_first_cell

    import conf

    configured = conf.sphinx_gallery_conf["first_notebook_cell"]
    installs = []
    for notebook in notebooks:
        first = _first_cell(notebook)
        pins = _expected_pins(notebook.with_suffix(".py"))
        assert first == notebook_first_cell(configured, pins), notebook.name
        assert re.search(rf"^%pip install .*\b{re.escape(wheel.name)}$", first, re.M)
        installs.append(first.rsplit("%pip install ", 1)[1].split())
    # Two notebooks run at a time and two pip runs into one environment at once
    # would collide, so the packages every first cell names are installed up front.
    union = list(dict.fromkeys(w for words in installs for w in words))
    make = (
        "python3 -m venv .venv\n.venv/bin/pip install -q nbclient ipykernel "
        + " ".join(union)
    )
    return _env("notebook", make, wheel, make)


#: Notebooks that run longest (seconds, measured), started first so that the two
#: runners finish together; the rest follow in page order.
LONGEST_FIRST = ("plot_3_siamese", "plot_2_tied_transformer", "plot_weightshare_check")


@pytest.fixture(scope="module")
def notebook_runs(
    downloads: Path, notebook_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Each page's notebook, executed in a folder of its own with the wheel beside it,
    in a new kernel (``run_notebooks.py``: two runners, one core each).

    The first page's notebook runs whole, its ``%pip install`` cell included. In the
    others that cell is left out: it is compared word for word with the page's pins
    above, and in this environment, made by running it, it would only spend two
    seconds of pip finding everything installed.
    """
    wheel = next(downloads.glob("*.whl"))
    order = sorted(PAGES, key=lambda p: Path(p).stem not in LONGEST_FIRST)
    lanes: list[list[dict[str, Any]]] = [[], []]
    for n, page in enumerate(order):
        notebook = Path(page).with_suffix(".ipynb").name
        folder = tmp_path_factory.mktemp("notebook")
        for file in (downloads / notebook, wheel):
            shutil.copy(file, folder)
        job = {"notebook": str(folder / notebook), "skip_first_cell": page != PAGES[0]}
        lanes[n % 2].append(job)
    python = notebook_env / ".venv" / "bin" / "python"
    runner = Path(__file__).with_name("run_notebooks.py")
    jobs, outputs = {}, []
    for n, lane in enumerate(lanes):
        folder = tmp_path_factory.mktemp("lane")
        (folder / "jobs.json").write_text(json.dumps(lane))
        outputs.append(folder / "results.jsonl")
        jobs[f"lane {n}"] = (f"{python} {runner} jobs.json results.jsonl", folder)
    runs = _run_all(jobs, timeout=1200)
    results: dict[str, dict[str, Any]] = {}
    for output in outputs:  # every notebook that finished, before any lane's failure
        if output.exists():
            for line in output.read_text().splitlines():
                result = json.loads(line)
                results[Path(result["notebook"]).stem] = result
    for name, done in runs.items():
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    return results


@pytest.mark.parametrize("page", PAGES)
def test_downloaded_notebook_runs_in_a_new_kernel(
    page: str, notebook_runs: dict[str, dict[str, Any]]
) -> None:
    result = notebook_runs.get(Path(page).stem)
    assert result is not None, f"{page}: the notebook runner never reported on it"
    assert result["ok"], result["error"]


def test_download_all_examples_has_every_script_and_notebook(
    site_url: str, tmp_path: Path
) -> None:
    parser = _Page()
    index = urljoin(site_url, "auto_examples/index.html")
    with urllib.request.urlopen(index, timeout=30) as response:
        parser.feed(response.read().decode())
    zips = [urljoin(index, href) for href in parser.downloads if href.endswith(".zip")]
    assert len(zips) == 2, parser.downloads  # the scripts, and the notebooks
    expected = {Path(page).name for page in PAGES}
    for url in zips:
        with zipfile.ZipFile(_fetch(url, tmp_path / Path(url).name)) as archive:
            names = {Path(n).with_suffix(".html").name for n in archive.namelist()}
        assert expected <= names, f"{url} lacks {expected - names}"
