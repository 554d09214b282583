"""The code is typed, formatted, linted and spelled the way the project asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )


def test_mypy_strict_on_the_package() -> None:
    result = _run(str(BIN / "mypy"))  # strict, on src/weightshare: see pyproject.toml
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_lint() -> None:
    paths = ("src", "tests", "examples", "benchmarks", "docs/_ext", "conf.py")
    result = _run(str(BIN / "ruff"), "check", *paths)
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format() -> None:
    paths = ("src", "tests", "examples", "benchmarks", "docs/_ext", "conf.py")
    result = _run(str(BIN / "ruff"), "format", "--check", *paths)
    assert result.returncode == 0, result.stdout[-4000:]


def test_spelling_of_prose_and_code() -> None:
    paths = ("README.md", "docs", "examples", "src", "tests", "benchmarks")
    result = _run(str(BIN / "codespell"), *paths)
    assert result.returncode == 0, result.stdout[-4000:]
