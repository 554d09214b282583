"""Gallery code cells run inside ``make doctest``, and must print what the page shows.

As an extension (``"gallery_doctest"`` in ``extensions``), it makes the doctest
builder run a gallery page's code cells in page order, with the doctest blocks of the
page's text in between, so a ``>>>`` claim in the prose is checked against the state
the page's own code has built at that point. Each cell must also show what the html
build recorded on the page (:func:`run_cell`): two runs, the same numbers. What a cell
"shows" follows sphinx-gallery's own ``capture_repr`` and ``ignore_repr_types``
settings, read from ``sphinx_gallery_conf``.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import re
from pathlib import Path
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.0"

_GENERATED = re.compile(r"GENERATED FROM PYTHON SOURCE LINES (\d+)-(\d+)")

_CELL_TEMPLATE = """\
from gallery_doctest import run_cell as _ws_run_cell
_ws_run_cell(
    {source!r},
    {filename!r},
    globals(),
    recorded={recorded!r},
    capture_repr={capture_repr!r},
    ignore_repr_types={ignore_repr_types!r},
)
"""
#: sphinx-gallery's defaults for the two settings that decide what a cell shows.
DEFAULT_CAPTURE_REPR = ("_repr_html_", "__repr__")
DEFAULT_IGNORE_REPR_TYPES = ""

#: A printed line that contains this marker is a wall-clock reading (a time or a
#: ratio of times); it differs from run to run, so ``run_cell`` does not compare it.
WALL_CLOCK = "(wall clock)"

_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def repr_settings(config: Any) -> tuple[tuple[str, ...], str]:
    """``capture_repr`` and ``ignore_repr_types`` of ``config.sphinx_gallery_conf``.

    Missing keys take sphinx-gallery's defaults; ``config`` may be ``None``.
    """
    conf = getattr(config, "sphinx_gallery_conf", None) or {}
    capture = conf.get("capture_repr", DEFAULT_CAPTURE_REPR)
    capture = (capture,) if isinstance(capture, str) else tuple(capture)
    return capture, str(conf.get("ignore_repr_types", DEFAULT_IGNORE_REPR_TYPES))


def _cell_test(
    code: str,
    filename: str,
    first_line: int,
    recorded: str | None = None,
    capture_repr: tuple[str, ...] = DEFAULT_CAPTURE_REPR,
    ignore_repr_types: str = DEFAULT_IGNORE_REPR_TYPES,
) -> str:
    """Doctest source that runs a code cell in the page's namespace.

    Leading newlines keep tracebacks pointing at the example file's own lines.
    ``recorded`` is what the html build printed for the cell (see :func:`run_cell`).
    """
    source = "\n" * (first_line - 1) + code
    return _CELL_TEMPLATE.format(
        source=source,
        filename=filename,
        recorded=recorded,
        capture_repr=capture_repr,
        ignore_repr_types=ignore_repr_types,
    )


def _shown_repr(
    value: object, capture_repr: tuple[str, ...], ignore_repr_types: str
) -> str | None:
    """The text sphinx-gallery shows for a cell's last expression, if any.

    As sphinx-gallery does: a value whose type matches ``ignore_repr_types`` shows
    nothing; otherwise the first method of ``capture_repr`` that returns a string
    decides. ``_repr_html_`` output goes into the page as HTML, not as text, and a
    repr of ``"None"`` shows nothing.
    """
    if ignore_repr_types and re.search(ignore_repr_types, str(type(value))):
        return None
    text, method = None, None
    for name in capture_repr:
        try:
            text = getattr(value, name)()
        except Exception:  # sphinx-gallery tries the next method
            text, method = None, None
            continue
        method = None if text is None or text == "None" else name
        if isinstance(text, str):
            break
    if method in ("__repr__", "__str__") and text:
        return str(text)
    return None


def _comparable(printed: str) -> list[str]:
    """Printed lines as two runs compare them: no wall-clock lines, no addresses."""
    lines = [
        _ADDRESS.sub("0x…", line.rstrip())
        for line in printed.expandtabs().splitlines()
        if WALL_CLOCK not in line
    ]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_cell(
    code: str,
    filename: str,
    namespace: dict[str, Any],
    recorded: str | None = None,
    *,
    capture_repr: tuple[str, ...] = DEFAULT_CAPTURE_REPR,
    ignore_repr_types: str = DEFAULT_IGNORE_REPR_TYPES,
) -> str:
    """Run one gallery code cell in ``namespace`` and return what it shows.

    What it shows is its printed output followed, when the cell ends with an
    expression, by that value's text as sphinx-gallery records it with the same
    ``capture_repr`` and ``ignore_repr_types``. When ``recorded`` (the output the
    html build put on the page) is given, the two must match line for line, except
    lines marked :data:`WALL_CLOCK` and memory addresses: this is how
    ``make doctest`` checks that a second run of every page gives the numbers the
    published page shows.

    Raises
    ------
    AssertionError
        If this run shows something other than ``recorded``; the message has a diff.
    """
    tree = ast.parse(code, filename)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        tree.body.pop()
    buffer = io.StringIO()
    value = None
    with contextlib.redirect_stdout(buffer):
        # dont_inherit: this module's `from __future__ import annotations` must not
        # turn the cell's annotations into strings (sphinx-gallery does not either).
        exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
        if isinstance(last, ast.Expr):
            expression = ast.Expression(last.value)
            code_object = compile(expression, filename, "eval", dont_inherit=True)
            value = eval(code_object, namespace)
    shown = buffer.getvalue()
    if isinstance(last, ast.Expr):
        text = _shown_repr(value, capture_repr, ignore_repr_types)
        if text:
            shown = f"{shown}\n{text}"
    if recorded is not None and _comparable(shown) != _comparable(recorded):
        first = next(
            (n for n, line in enumerate(code.splitlines(), 1) if line.strip()), 1
        )
        diff = "\n".join(
            difflib.unified_diff(
                _comparable(recorded),
                _comparable(shown),
                "page (html build)",
                "this run",
                lineterm="",
            )
        )
        raise AssertionError(
            f"The cell at line {first} of {filename} printed something other than "
            f"the page shows:\n{diff}\nIf src/ or the example changed since the "
            "page was built, rebuild it with `make html-rerun`. Otherwise the number "
            "is not reproducible: seed what draws it, or, if it is a time, print it on "
            f"a line marked {WALL_CLOCK!r}."
        )
    return shown


def _is_output_or_marked(block: Any) -> bool:
    """Whether a literal block is a cell's printed output, or already a test."""
    classes = block.get("classes", [])
    output = "sphx-glr-script-out" in classes or block.get("language") == "none"
    return bool(output or "none" in classes or "testnodetype" in block)


def _is_script_output(node: Any) -> bool:
    from docutils import nodes

    classes = node.get("classes", []) if isinstance(node, nodes.Element) else []
    return isinstance(node, nodes.literal_block) and "sphx-glr-script-out" in classes


def _recorded_output(siblings: list[Any], index: int) -> str:
    """The output block the html build wrote after the cell at ``siblings[index]``.

    It lies between the cell and the next ``GENERATED`` comment; a cell that printed
    nothing has none, and then its recorded output is empty.
    """
    from docutils import nodes

    for node in siblings[index + 1 :]:
        if isinstance(node, nodes.comment) and _GENERATED.fullmatch(
            node.astext().strip()
        ):
            break
        if _is_script_output(node):
            return str(node.astext())
    return ""


def mark_gallery_cells(app: Any, doctree: Any) -> None:
    """Turn each gallery code cell of ``doctree`` into a ``testcode`` node.

    sphinx-gallery writes ``.. GENERATED FROM PYTHON SOURCE LINES a-b`` before every
    block; a literal block right after such a comment is a code cell. The doctest
    builder then runs cells and the text's doctest blocks in document order, in one
    namespace per page. When the page was built with its examples run (it has output
    blocks), each cell must also show what the page shows (:func:`run_cell`), judged
    with the gallery's ``capture_repr`` and ``ignore_repr_types``.
    """
    from docutils import nodes

    capture_repr, ignore_repr_types = repr_settings(getattr(app, "config", None))
    # sphinx-gallery keeps a copy of the example script beside the generated page.
    script = str(Path(doctree.get("source", "example.rst")).with_suffix(".py"))
    executed = any(doctree.findall(_is_script_output))
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
        recorded = _recorded_output(siblings, index + 1) if executed else None
        cell["testnodetype"] = "testcode"
        cell["groups"] = ["default"]
        cell["options"] = {}
        cell["test"] = _cell_test(
            cell.astext(),
            script,
            int(match.group(1)),
            recorded,
            capture_repr,
            ignore_repr_types,
        )


def check_config(app: Any, config: Any) -> None:
    """``config-inited``: the cells to test come from sphinx-gallery.

    Raises
    ------
    sphinx.errors.ConfigError
        If ``sphinx_gallery.gen_gallery`` is not among the extensions, or
        ``sphinx_gallery_conf`` is not a dict.
    """
    if "sphinx_gallery.gen_gallery" not in config.extensions:
        raise ConfigError(
            "gallery_doctest tests the code cells of sphinx-gallery pages: add "
            "'sphinx_gallery.gen_gallery' to extensions (before 'gallery_doctest')."
        )
    conf = getattr(config, "sphinx_gallery_conf", None)
    if not isinstance(conf, dict):
        raise ConfigError(
            "gallery_doctest: sphinx_gallery_conf must be a dict, got "
            f"{type(conf).__name__}."
        )


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: gallery code cells become doctests."""
    app.connect("config-inited", check_config)
    app.connect("doctree-read", mark_gallery_cells)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
