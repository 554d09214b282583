"""pytest set-up for the whole repository: the library's docstring examples.

``--doctest-modules`` (``pyproject.toml``) makes pytest run the ``>>>`` examples of
every module it is given, and ``src/weightshare`` is among the paths of ``make
check`` and ``make test``. pytest would run each example in a copy of its module's
namespace; here it starts empty instead, as on the API page and in a reader's
session, so an example that uses a name without importing it fails.
"""

from __future__ import annotations

import pytest
from _pytest.doctest import DoctestItem


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, DoctestItem) and item.dtest is not None:
            item.dtest.globs = {}
