"""Gallery pages draw Graphviz graphs, and every example starts from the same seed.

Two hooks for sphinx-gallery, named in ``sphinx_gallery_conf`` by their dotted path
(this folder is on ``sys.path``, see conf.py):

``gallery_graphviz.graphviz_scraper`` (in ``image_scrapers``)
    When the last expression of a code cell is a Graphviz graph (what
    ``torchviz.make_dot`` returns), it is rendered to an SVG file and shown in the
    page, as Jupyter would show it, instead of its repr text.
``gallery_graphviz.reset_seeds`` (in ``reset_modules``)
    Seeds ``random``, NumPy and PyTorch before each example, and puts transformers'
    logging back to its defaults (verbosity, handler) if a page that changed it
    stopped on an error before restoring it, so no example depends on the ones
    built before it.

As an extension (``"gallery_graphviz"`` in ``extensions``) it checks, when the
configuration is read, that a gallery using the scraper also hides the graphs' repr
text (``ignore_repr_types``).
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.0"

SEED = 0

_MISSING_DOT = (
    "Graphviz's 'dot' program was not found on PATH, so the graph cannot be drawn. "
    "Install the system package 'graphviz' (Debian/Ubuntu: apt-get install graphviz; "
    "macOS: brew install graphviz; conda: conda install graphviz) and build again."
)


def reset_seeds(gallery_conf: Any, fname: str) -> None:
    """Seed Python's ``random``, NumPy and PyTorch with ``SEED`` (0), and give
    transformers' logging its defaults (:func:`reset_transformers_logging`).

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
    reset_transformers_logging()


def reset_transformers_logging() -> None:
    """Give transformers' logging its defaults, if transformers is imported.

    Pages silence it for a while (``set_verbosity_error``, a buffering handler) and
    restore it at their end; a page stopped by an error leaves it changed.
    """
    import sys

    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging

    logging.set_verbosity(logging._get_default_logging_level())
    logging.enable_default_handler()


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


def check_config(app: Any, config: Any) -> None:
    """``config-inited``: a gallery that draws graphs must not also print their repr.

    Raises
    ------
    sphinx.errors.ConfigError
        If ``graphviz_scraper`` is among the ``image_scrapers`` while
        ``ignore_repr_types`` does not match Graphviz's types.
    """
    conf = getattr(config, "sphinx_gallery_conf", None) or {}
    scrapers = conf.get("image_scrapers", ())
    if not any(str(s).endswith("graphviz_scraper") for s in scrapers):
        return
    ignored = conf.get("ignore_repr_types", "")
    if not (ignored and re.search(ignored, "<class 'graphviz.graphs.Digraph'>")):
        raise ConfigError(
            "gallery_graphviz: sphinx_gallery_conf['ignore_repr_types'] is "
            f"{ignored!r}, which does not match Graphviz graphs, so each drawn graph "
            "would also print its source text. Set it to r'graphviz\\.' (or a "
            "pattern that includes it)."
        )


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: check the gallery's configuration for the scraper."""
    app.connect("config-inited", check_config)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
