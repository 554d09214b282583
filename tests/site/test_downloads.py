"""The gallery's downloads, run the way a reader runs them: no clone, a fresh venv.

Each gallery page offers its script, its notebook and the weightshare wheel, and says
how to run them (the "Run this example on your own machine" box). This test fetches
those files from the built site served on localhost, puts each in an empty folder and:

- runs the script in a virtual environment made by the page's own commands;
- executes the notebook with nbclient, in an environment with Jupyter's kernel
  (ipykernel), nbclient and what the notebooks' first cells install.

Each page's box and its notebook's first cell must install exactly the pins of what
the page's script imports (conf.py's ``weightshare_import_requirements``); the runs
share one environment with all of them, since one per set of imports would cost
minutes of pip each.

Making the two environments costs a few minutes of pip, so they are kept in
`_build/download-envs/` and made again only when the page's install commands (or the
notebook's first cell) change; the wheel is reinstalled from the site on every run.
The runs go two at a time, one core each (``OMP_NUM_THREADS=1``): each is still a
process of its own, in a folder of its own.
"""

from __future__ import annotations

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


def _union(setups: list[list[str]]) -> list[str]:
    """Every package any of the set-ups installs, each once, in first-seen order."""
    return list(dict.fromkeys(word for lines in setups for word in _installs(lines)))


@pytest.fixture(scope="module")
def script_env(setup_lines: dict[str, list[str]], downloads: Path) -> Path:
    """One environment with what every page installs (a page's own set-up is a part
    of it; the test above checks that each part is what its page imports)."""
    wheel = next(downloads.glob("*.whl"))
    lines = next(iter(setup_lines.values()))
    install = "pip install " + " ".join(_union(list(setup_lines.values())))
    make = "\n".join([*(line for line in lines if "pip install" not in line), install])
    return _env("script", make, wheel, make)


def _run_all(
    jobs: dict[str, tuple[str, Path]], timeout: float
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each page's ``(bash script, folder)``, two at a time (two cores)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            page: pool.submit(_bash, script, folder, timeout)
            for page, (script, folder) in jobs.items()
        }
        return {page: future.result() for page, future in futures.items()}


@pytest.fixture(scope="module")
def script_runs(
    downloads: Path, script_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each page's script, run alone in an empty folder with the page's environment."""
    jobs = {}
    for page in PAGES:
        script = Path(page).with_suffix(".py").name
        folder = tmp_path_factory.mktemp("script")
        shutil.copy(downloads / script, folder)
        assert [p.name for p in folder.iterdir()] == [script]  # nothing else: no clone
        activate = f". {script_env}/.venv/bin/activate\npython {script}"
        jobs[page] = (activate, folder)
    return _run_all(jobs, timeout=600)


@pytest.mark.parametrize("page", PAGES)
def test_downloaded_script_runs_in_a_fresh_venv(
    page: str, script_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = script_runs[page]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _first_cell(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return "".join(code[0]["source"])


@pytest.fixture(scope="module")
def notebook_env(downloads: Path) -> Path:
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
    # A reader's Jupyter: a kernel and a way to run notebooks. The packages every
    # notebook's first cell names are installed up front, since two notebooks run at
    # a time and two pip runs into one environment at once would collide; each
    # first cell then finds what it names installed.
    union = list(dict.fromkeys(w for words in installs for w in words))
    make = (
        "python3 -m venv .venv\n.venv/bin/pip install -q nbclient ipykernel "
        + " ".join(union)
    )
    return _env("notebook", make, wheel, make)


def _execute(notebook: str) -> str:
    return f"jupyter-execute --kernel_name=python3 --timeout=600 {notebook}"


@pytest.fixture(scope="module")
def notebook_runs(
    downloads: Path, notebook_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each page's notebook, executed alone in a folder with the wheel beside it.

    The first notebook runs by itself: in a new environment its first cell installs
    what every notebook needs, and two installs at once would collide. The others
    then run two at a time.
    """
    jobs = {}
    wheel = next(downloads.glob("*.whl"))
    for page in PAGES:
        notebook = Path(page).with_suffix(".ipynb").name
        folder = tmp_path_factory.mktemp("notebook")
        for file in (downloads / notebook, wheel):
            shutil.copy(file, folder)
        jobs[page] = (
            f". {notebook_env}/.venv/bin/activate\n{_execute(notebook)}",
            folder,
        )
    first = PAGES[0]
    runs = _run_all({first: jobs.pop(first)}, timeout=900)
    return runs | _run_all(jobs, timeout=900)


@pytest.mark.parametrize("page", PAGES)
def test_downloaded_notebook_runs_with_nbclient(
    page: str, notebook_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = notebook_runs[page]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


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
