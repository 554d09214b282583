"""Set-up shared by every test folder, and by the library's docstring examples.

``tests/lib`` needs no Sphinx build, browser or download (``make check`` runs it
with ``tests/benchmarks`` and the examples in ``src/weightshare``); ``tests/site``
builds and serves the site (``make test`` runs every folder).

``--doctest-modules`` (``pyproject.toml``) makes pytest run the ``>>>`` examples of
every module of ``src/weightshare``. This file is loaded before anything is
collected whenever a path under ``tests/`` is given (as both targets do), and it
makes two things hold there: the package's namespace is complete before its module
is searched for examples (it imports each name on first use, and the classes that
call themselves ``weightshare.X`` are found only there), and each example starts in
an empty namespace, as on the API page and in a reader's session, so an example
that uses a name without importing it fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

# The site's Sphinx extensions (tests/site/test_site_extensions.py and the benchmarks
# page's tabulation in tests/benchmarks/), as conf.py finds them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))


def pytest_collection(session: pytest.Session) -> None:
    import weightshare

    for name in weightshare.__all__:
        getattr(weightshare, name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, DoctestItem) and item.dtest is not None:
            item.dtest.globs = {}
