"""Every public module's doctests run and pass (a wrong docstring fails the suite)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "weightshare",
    "weightshare._checkpoint._check",
    "weightshare._checkpoint._cli",
    "weightshare._checkpoint._format",
    "weightshare._checkpoint._saveload",
    "weightshare._checkpoint._torch",
    "weightshare._count",
    "weightshare._errors",
    "weightshare._fsdp",
    "weightshare._grad",
    "weightshare._groups",
    "weightshare._guard",
    "weightshare._optim",
    "weightshare._tie",
    "weightshare.distributed",
    "weightshare._unionfind",
    "weightshare.models",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", []) if name == "weightshare" else []:
        # the package imports its names on first use; doctest looks in its __dict__
        getattr(module, public)
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
