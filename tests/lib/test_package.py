"""The package is the library alone: lazy imports, no Sphinx, a cheap site config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import weightshare

ROOT = Path(__file__).resolve().parents[2]
SITE_ONLY = {"sphinx", "docutils", "sphinx_gallery", "myst_parser"}


def test_no_module_of_the_library_imports_sphinx_or_docutils() -> None:
    for path in (ROOT / "src" / "weightshare").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            roots = {name.split(".")[0] for name in names}
            assert not roots & SITE_ONLY, f"{path.name} imports {roots & SITE_ONLY}"


def test_loading_the_sites_extensions_imports_neither_torch_nor_the_library() -> None:
    code = (
        "import sys; sys.path.insert(0, 'docs/_ext'); import gallery_graphviz, "
        "gallery_doctest, gallery_downloads, offline_site, benchmark_results; "
        "print('torch' in sys.modules, 'weightshare' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout.split() == ["False", "False"]


def test_every_public_name_resolves_and_the_stub_lists_it() -> None:
    assert sorted(weightshare.__all__) == weightshare.__all__
    stub = (ROOT / "src" / "weightshare" / "__init__.pyi").read_text()
    imported = {
        alias.asname or alias.name
        for node in ast.walk(ast.parse(stub))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    for name in weightshare.__all__:
        value = getattr(weightshare, name)  # imports the defining module on first use
        assert getattr(value, "__name__", name) == name, name
        assert name in imported, f"{name} is missing from __init__.pyi"
        assert name in dir(weightshare), name
    assert imported - set(weightshare.__all__) == {"distributed", "models"}


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = weightshare.nope  # type: ignore[attr-defined]


def test_importing_the_package_or_the_command_line_imports_no_torch() -> None:
    code = (
        "import sys, weightshare, weightshare._checkpoint._cli; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["[]"]


def test_checking_a_header_imports_neither_torch_nor_numpy(tmp_path: Path) -> None:
    """A file with no two tensors of one dtype and shape: nothing to compare."""
    import safetensors.torch
    import torch

    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2), "b": torch.ones(3)}, str(path))
    code = (
        "import sys; from weightshare._checkpoint._cli import main; "
        f"status = main(['check', {str(path)!r}]); "
        "print(status, sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "0 []"
