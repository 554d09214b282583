"""The hosting configurations build the site the way `make html` does.

Read the Docs and GitHub Actions cannot be run from here, so these tests read their
files and check each point that a hosted build depends on, against the Makefile.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import yaml
from conftest import ROOT


def _yaml(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def _makefile_sphinx_flags() -> set[str]:
    line = next(
        line
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("SPHINX ")
    )
    return {flag for flag in line.split() if flag.startswith("-") and flag != "-m"}


def test_read_the_docs_builds_like_make_html() -> None:
    config = _yaml(".readthedocs.yaml")
    assert config["version"] == 2
    assert config["build"]["tools"]["python"] == "3.11"
    assert "graphviz" in config["build"]["apt_packages"]
    install = " ".join(config["build"]["jobs"]["install"])
    assert "-r requirements.txt" in install
    assert "download.pytorch.org/whl/cpu" in install  # the CPU build of torch
    (command,) = config["build"]["jobs"]["build"]["html"]
    words = command.split()
    assert words[:3] == ["python", "-m", "sphinx"]
    assert {"-W", "--keep-going", "-n", "-c"} <= set(words)
    assert words[words.index("-c") + 1] == "."  # conf.py at the top
    assert "docs" in words and "$READTHEDOCS_OUTPUT/html" in words
    assert {"-W", "--keep-going", "-n", "-c"} <= _makefile_sphinx_flags()
    assert config["sphinx"]["configuration"] == "conf.py"


def test_github_pages_workflow_builds_tests_and_publishes() -> None:
    workflow = _yaml(".github/workflows/pages.yml")
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = [step.get("run", "") for step in build["steps"]]
    assert any("graphviz" in run for run in runs)
    assert runs.index("make html") < runs.index("make test")
    upload = next(
        s for s in build["steps"] if "upload-pages-artifact" in s.get("uses", "")
    )
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert any("deploy-pages" in s.get("uses", "") for s in deploy["steps"])
    assert workflow["permissions"]["pages"] == "write"
    assert "download.pytorch.org/whl/cpu" in workflow["env"]["PIP_EXTRA_INDEX_URL"]


def test_offline_inventories_match_their_sources() -> None:
    folder = ROOT / "docs" / "_intersphinx"
    spec = importlib.util.spec_from_file_location("inv", folder / "make_inventories.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sources = sorted(folder.glob("*.txt"))
    assert [s.stem for s in sources] == ["python", "torch"]
    for source in sources:
        written = source.with_suffix(".inv").read_bytes()
        assert written == module.inventory(source), (
            f"{source.name} changed: run python docs/_intersphinx/make_inventories.py"
        )
        for line in source.read_text().splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"\S+ py:[a-z]+ \S+\.html#(module-)?\$", line), line
