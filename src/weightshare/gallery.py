"""Build helpers for a sphinx-gallery site about shared parameters.

Three pieces, each usable on its own in any Sphinx project:

``graphviz_scraper``
    An image scraper for sphinx-gallery. When the last expression of a code cell is
    a Graphviz graph (what ``torchviz.make_dot`` returns), it is rendered to an SVG
    file and shown in the page, as Jupyter would show it, instead of its repr text.
``reset_seeds``
    A ``reset_modules`` hook that seeds ``random``, NumPy and PyTorch before each
    example, so no example depends on the ones built before it.
``setup``
    A Sphinx extension (add ``"weightshare.gallery"`` to ``extensions``). It makes the
    doctest builder run a gallery page's code cells in page order, with the doctest
    blocks of the page's text in between, so a ``>>>`` claim in the prose is checked
    against the state the page's own code has built at that point.

This module is not imported by ``import weightshare``; it needs no Sphinx at import.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import Any

__all__ = ["graphviz_scraper", "render_svg", "reset_seeds", "setup"]

SEED = 0
_GENERATED = re.compile(r"GENERATED FROM PYTHON SOURCE LINES (\d+)-(\d+)")
_MISSING_DOT = (
    "Graphviz's 'dot' program was not found on PATH, so the graph cannot be drawn. "
    "Install the system package 'graphviz' (Debian/Ubuntu: apt-get install graphviz; "
    "macOS: brew install graphviz; conda: conda install graphviz) and build again."
)


def reset_seeds(gallery_conf: Any, fname: str) -> None:
    """Seed Python's ``random``, NumPy and PyTorch with ``SEED`` (0).

    sphinx-gallery calls it before each example when it is listed in
    ``reset_modules``; the doctest setup calls it before each page.
    """
    random.seed(SEED)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's users
        pass
    else:
        np.random.seed(SEED)
    import torch

    torch.manual_seed(SEED)


def _is_graph(obj: object) -> bool:
    """Whether ``obj`` is a ``graphviz`` graph (Graph, Digraph or Source)."""
    kind = type(obj)
    return kind.__module__.split(".")[0] == "graphviz" and hasattr(obj, "pipe")


def render_svg(graph: Any) -> str:
    """Render a ``graphviz`` graph to SVG text with a transparent background.

    The caller's graph is not modified (a copy gets the background attribute).

    Raises
    ------
    RuntimeError
        If Graphviz's ``dot`` program is missing; the message says how to install it.
    """
    import graphviz

    drawn = graph.copy()
    if hasattr(drawn, "graph_attr"):
        drawn.graph_attr["bgcolor"] = "transparent"
    try:
        svg: str = drawn.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound as err:
        raise RuntimeError(_MISSING_DOT) from err
    # Drop the XML prolog and doctype: the file is served as an image, and the
    # comments graphviz writes there only carry its version.
    return svg[svg.index("<svg") :]


def _ends_with_expression(code: str) -> bool:
    """Whether the last statement of ``code`` is an expression (its value is shown)."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and isinstance(body[-1], ast.Expr)


def graphviz_scraper(block: Any, block_vars: dict[str, Any], gallery_conf: Any) -> str:
    """Show a cell's Graphviz graph as an SVG image (a sphinx-gallery scraper).

    The graph is the cell's last expression, exactly what a notebook displays. Pair
    it with ``ignore_repr_types = r"graphviz\\."`` so the repr text is not printed.
    The image gets the CSS class ``ws-graphviz`` for dark-mode styling.
    """
    if not _ends_with_expression(block.content):
        return ""
    graph = block_vars["example_globals"].get("___")
    if not _is_graph(graph):
        return ""
    path = Path(next(block_vars["image_path_iterator"])).with_suffix(".svg")
    path.write_text(render_svg(graph), encoding="utf-8")
    rel = path.relative_to(Path(gallery_conf["src_dir"])).as_posix()
    alt = getattr(graph, "comment", None) or "graph drawn with Graphviz"
    return (
        f"\n\n.. image:: /{rel}\n"
        f"   :alt: {alt}\n"
        "   :class: sphx-glr-single-img dark-light ws-graphviz\n\n"
    )


_CELL_TEMPLATE = """\
import contextlib as _ws_contextlib, io as _ws_io
with _ws_contextlib.redirect_stdout(_ws_io.StringIO()):
    exec(compile({source!r}, {filename!r}, "exec"), globals())
"""


def _cell_test(code: str, filename: str, first_line: int) -> str:
    """Doctest source that runs a code cell silently in the page's namespace.

    The cell's printed output is already on the page; the claims are the doctests.
    Leading newlines keep tracebacks pointing at the example file's own lines.
    """
    source = "\n" * (first_line - 1) + code
    return _CELL_TEMPLATE.format(source=source, filename=filename)


def _is_output_or_marked(block: Any) -> bool:
    """Whether a literal block is a cell's printed output, or already a test."""
    classes = block.get("classes", [])
    output = "sphx-glr-script-out" in classes or block.get("language") == "none"
    return bool(output or "none" in classes or "testnodetype" in block)


def mark_gallery_cells(app: Any, doctree: Any) -> None:
    """Turn each gallery code cell of ``doctree`` into a ``testcode`` node.

    sphinx-gallery writes ``.. GENERATED FROM PYTHON SOURCE LINES a-b`` before every
    block; a literal block right after such a comment is a code cell. The doctest
    builder then runs cells and the text's doctest blocks in document order, in one
    namespace per page.
    """
    from docutils import nodes

    # sphinx-gallery keeps a copy of the example script beside the generated page.
    script = str(Path(doctree.get("source", "example.rst")).with_suffix(".py"))
    for comment in list(doctree.findall(nodes.comment)):
        match = _GENERATED.fullmatch(comment.astext().strip())
        if match is None:
            continue
        index = comment.parent.index(comment)
        siblings = comment.parent.children
        if index + 1 >= len(siblings):
            continue
        cell = siblings[index + 1]
        if not isinstance(cell, nodes.literal_block) or _is_output_or_marked(cell):
            continue
        cell["testnodetype"] = "testcode"
        cell["groups"] = ["default"]
        cell["options"] = {}
        cell["test"] = _cell_test(cell.astext(), script, int(match.group(1)))


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: register :func:`mark_gallery_cells` on ``doctree-read``."""
    app.connect("doctree-read", mark_gallery_cells)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
