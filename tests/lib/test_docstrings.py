"""The library's docstring examples run: every module's, and every public name has one.

The examples themselves are collected by pytest's ``--doctest-modules`` over
``src/weightshare`` (``pyproject.toml``; the root ``conftest.py`` starts each in an
empty namespace), so a module added to the package is covered without a list.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "weightshare"


def test_every_public_name_has_examples() -> None:
    import weightshare

    for name in weightshare.__all__:
        doc = getattr(weightshare, name).__doc__ or ""
        assert "Examples\n" in doc and ">>> " in doc, name


def test_every_module_with_examples_has_them_collected(
    request: pytest.FixtureRequest,
) -> None:
    assert request.config.getoption("doctestmodules"), "--doctest-modules is off"
    collected: dict[Path, list[DoctestItem]] = {}
    for item in request.session.items:
        if isinstance(item, DoctestItem):
            collected.setdefault(item.path.resolve(), []).append(item)
    if not any(path.is_relative_to(PACKAGE) for path in collected):
        pytest.skip("src/weightshare is not among the paths given to pytest")
    with_examples = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if ">>> " in path.read_text(encoding="utf-8") and path.name != "__main__.py"
    ]
    assert with_examples, "no module of the library has examples"
    missing = [str(p.relative_to(PACKAGE)) for p in with_examples if p not in collected]
    assert not missing, f"examples not collected from {missing}"
