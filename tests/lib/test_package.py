"""The package is the library alone: plain imports, no Sphinx, a cheap site config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_every_public_name_is_exported_plainly() -> None:
    for name in weightshare.__all__:
        assert name in vars(weightshare), name
    assert sorted(weightshare.__all__) == weightshare.__all__
