"""The package imports cheaply and exposes its API lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import weightshare


def test_importing_the_package_or_its_sphinx_helpers_does_not_import_torch() -> None:
    code = "import sys, weightshare, weightshare.gallery; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in weightshare.__all__:
        assert getattr(weightshare, name) is not None
        assert name in dir(weightshare)


def test_an_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'shared_group'"):
        _ = weightshare.shared_group  # type: ignore[attr-defined]
