"""Every public module's doctests run and pass (a wrong docstring fails the suite)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "weightshare",
    "weightshare._check",
    "weightshare._checkpoint",
    "weightshare._cli",
    "weightshare._count",
    "weightshare._errors",
    "weightshare._fsdp",
    "weightshare._format",
    "weightshare._grad",
    "weightshare._groups",
    "weightshare._guard",
    "weightshare._optim",
    "weightshare._tie",
    "weightshare.distributed",
    "weightshare.models",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    # An empty namespace, as on the API page: each example imports what it uses.
    result = doctest.testmod(
        module, globs={}, optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.attempted > 0, f"{name} has no doctests"
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_every_public_name_has_examples() -> None:
    import weightshare

    for name in weightshare.__all__:
        doc = getattr(weightshare, name).__doc__ or ""
        assert "Examples\n" in doc and ">>> " in doc, name
