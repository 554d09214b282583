"""Build helpers for a sphinx-gallery site about shared parameters.

Three entry points, each usable on its own in any Sphinx project:

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
    against the state the page's own code has built at that point. Each cell must also
    print what the html build recorded on the page (``run_cell``): two runs, the same
    numbers. It also keeps the built site self-contained and runnable at home: math
    as MathML (``tex_to_mathml``), no scripts from CDNs (``drop_remote_scripts``), a
    wheel of the project and the commands to run each page (``build_wheel``,
    ``add_run_instructions``), and references retried under the names other projects
    document them by (``resolve_alias``).

This module is not imported by ``import weightshare``; it needs no Sphinx at import.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "WALL_CLOCK",
    "add_run_instructions",
    "build_wheel",
    "clean_notebooks",
    "drop_remote_scripts",
    "graphviz_scraper",
    "notebook_markdown",
    "render_svg",
    "reset_seeds",
    "resolve_alias",
    "run_cell",
    "run_commands",
    "setup",
    "tex_to_mathml",
]

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
from weightshare.gallery import run_cell as _ws_run_cell
_ws_run_cell({source!r}, {filename!r}, globals(), recorded={recorded!r})
"""
#: A printed line that contains this marker is a wall-clock reading (a time or a
#: ratio of times); it differs from run to run, so ``run_cell`` does not compare it.
WALL_CLOCK = "(wall clock)"
_REMOTE_SCRIPT = re.compile(r"<script[^>]+src=[\"']?(https?:)?//", re.IGNORECASE)
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def _cell_test(
    code: str, filename: str, first_line: int, recorded: str | None = None
) -> str:
    """Doctest source that runs a code cell in the page's namespace.

    Leading newlines keep tracebacks pointing at the example file's own lines.
    ``recorded`` is what the html build printed for the cell (see :func:`run_cell`).
    """
    source = "\n" * (first_line - 1) + code
    return _CELL_TEMPLATE.format(source=source, filename=filename, recorded=recorded)


def _shown_repr(value: object, ignore_repr_types: str) -> str | None:
    """The text sphinx-gallery shows for a cell's last expression, if any.

    Like sphinx-gallery's default ``capture_repr = ("_repr_html_", "__repr__")``: a
    value with an HTML repr is shown as HTML (no text), ``None`` and ignored types
    show nothing, anything else shows its ``repr``.
    """
    if value is None or re.search(ignore_repr_types, str(type(value))):
        return None
    html = getattr(value, "_repr_html_", None)
    if callable(html):
        try:
            if isinstance(html(), str):
                return None
        except Exception:  # sphinx-gallery falls back to __repr__ too
            pass
    text = repr(value)
    return None if text == "None" else text


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
    ignore_repr_types: str = r"graphviz\.",
) -> str:
    """Run one gallery code cell in ``namespace`` and return what it shows.

    What it shows is its printed output followed, when the cell ends with an
    expression, by that value's repr, exactly as sphinx-gallery records it. When
    ``recorded`` (the output the html build put on the page) is given, the two must
    match line for line, except lines marked :data:`WALL_CLOCK` and memory
    addresses: this is how ``make doctest`` checks that a second run of every page
    gives the numbers the published page shows.

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
    text = _shown_repr(value, ignore_repr_types)
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
    blocks), each cell must also print what the page shows (:func:`run_cell`).
    """
    from docutils import nodes

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
        cell["test"] = _cell_test(cell.astext(), script, int(match.group(1)), recorded)


def _newest_mtime(project: Path) -> float:
    """The newest modification time of the files ``project``'s wheel is built from."""
    files = [project / "pyproject.toml", *(project / "src").rglob("*")]
    built = {"__pycache__", "build"}  # written by imports and builds, not sources
    return max(
        f.stat().st_mtime
        for f in files
        if f.is_file()
        and not built.intersection(f.relative_to(project).parts)
        and not any(p.endswith(".egg-info") for p in f.relative_to(project).parts)
    )


def build_wheel(project: str | Path, dest: str | Path) -> Path:
    """Build the wheel of ``project`` into ``dest``; reuse it while it is up to date.

    A wheel already in ``dest`` is kept when no file of ``project/src`` or its
    ``pyproject.toml`` is newer, so a rebuild with nothing changed costs nothing.
    The wheel is built with the running Python's pip, without build isolation (the
    build backend must be installed) and without dependencies.

    Raises
    ------
    RuntimeError
        If pip fails; the message has pip's output.
    """
    project, dest = Path(project), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) == 1 and wheels[0].stat().st_mtime >= _newest_mtime(project):
        return wheels[0]
    for old in wheels:
        old.unlink()
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
    command += ["--no-build-isolation", "--disable-pip-version-check", "--quiet"]
    command += ["--wheel-dir", str(dest), str(project)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"Building the wheel of {project} failed (pip exit {done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return wheels[0]


def _offer_wheel(app: Any) -> None:
    """``builder-inited``: build the configured wheel into ``<srcdir>/_wheel``."""
    project = app.config.weightshare_wheel_project
    if project:
        dest = Path(app.srcdir) / "_wheel"
        app.env.weightshare_wheel = build_wheel(project, dest).name


def run_commands(requirements: list[str], wheel: str, script: str) -> str:
    """The shell lines that set up a fresh environment and run a downloaded script."""
    install = " ".join([*requirements, wheel] if wheel else requirements)
    return (
        "python3 -m venv .venv\n"
        ". .venv/bin/activate  # on Windows: .venv\\Scripts\\activate\n"
        f"pip install {install}\n"
        f"python {script}\n"
    )


def _is_gallery_footer(node: Any) -> bool:
    from docutils import nodes

    classes = node.get("classes", []) if isinstance(node, nodes.Element) else []
    return isinstance(node, nodes.container) and "sphx-glr-footer-example" in classes


def add_run_instructions(app: Any, doctree: Any) -> None:
    """``doctree-read``: tell the reader of a gallery page how to run it at home.

    Before the page's download buttons it adds a box with the commands that create a
    fresh virtual environment, install ``weightshare_run_requirements`` and the
    wheel, and run the script (the notebook's first cell installs the same), and it
    adds the wheel to the download buttons.
    """
    from docutils import nodes
    from sphinx import addnodes

    footer = next(iter(doctree.findall(_is_gallery_footer)), None)
    if footer is None:
        return
    wheel = getattr(app.env, "weightshare_wheel", "")
    script = Path(app.env.docname).name + ".py"
    box = nodes.admonition(classes=["ws-run-it", "tip"])
    box += nodes.title(text="Run this example on your own machine")
    intro = nodes.paragraph()
    if wheel:
        intro += nodes.Text(
            "Download the Python script (or the notebook) and the weightshare wheel "
            "below into an empty folder. weightshare is not on PyPI; the wheel is "
            "built from the same source as this page. Then, in that folder, run:"
        )
    else:
        intro += nodes.Text("Download the Python script below, and in its folder run:")
    box += intro
    commands = run_commands(app.config.weightshare_run_requirements, wheel, script)
    box += nodes.literal_block(
        commands, commands, language="bash", classes=["ws-run-commands"]
    )
    box += nodes.paragraph(
        text="A notebook installs the same packages in its first cell: open it in "
        "Jupyter from that folder and run all cells. Drawing autograd graphs also "
        "needs Graphviz's dot program (the system package graphviz). The versions "
        "are the ones this page was built and tested with."
    )
    footer.parent.insert(footer.parent.index(footer), box)
    # sphinx-gallery's note at the top says "Go to the end to download the full
    # example code."; the end now also says how to run it.
    for note in doctree.findall(nodes.Element):
        if "sphx-glr-download-link-note" in note.get("classes", []):
            for text in note.findall(nodes.Text):
                if str(text).rstrip().endswith("example code."):
                    replaced = str(text).rstrip()[:-1] + " and to see how to run it."
                    text.parent.replace(text, nodes.Text(replaced))
    if wheel:
        button = nodes.container(classes=["sphx-glr-download", "ws-download-wheel"])
        line = nodes.paragraph()
        line += addnodes.download_reference(
            "",
            "",
            nodes.literal(
                "",
                f"Download the weightshare wheel: {wheel}",
                classes=["xref", "download"],
            ),
            reftarget=f"/_wheel/{wheel}",
            refdoc=app.env.docname,
            refdomain="",
            reftype="download",
            refexplicit=True,
            refwarn=False,
        )
        button += line
        footer += button


def tex_to_mathml(tex: str, block: bool = False) -> str:
    """``tex`` as MathML, which browsers render with no script and no network.

    Uses docutils' LaTeX-to-MathML converter (the common LaTeX math commands).

    Raises
    ------
    ValueError
        If the converter does not know a command; the message names the formula.
    """
    from docutils.utils.math import MathError, latex2mathml

    try:
        return str(latex2mathml.tex2mathml(tex, as_block=block))
    except MathError as err:
        raise ValueError(f"cannot write {tex!r} as MathML: {err}") from err


def _math_html(translator: Any, node: Any, block: bool) -> None:
    from docutils import nodes
    from sphinx.util import logging

    try:
        markup = tex_to_mathml(node.astext(), block)
    except ValueError as err:
        logging.getLogger(__name__).warning(str(err), location=node)
        markup = f"<code>{translator.encode(node.astext())}</code>"
    tag = "div" if block else "span"
    translator.body.append(translator.starttag(node, tag, CLASS="math notranslate"))
    translator.body.append(markup + f"</{tag}>")
    raise nodes.SkipNode


def _visit_math(translator: Any, node: Any) -> None:
    _math_html(translator, node, block=False)


def _visit_displaymath(translator: Any, node: Any) -> None:
    _math_html(translator, node, block=True)


def drop_remote_scripts(app: Any, doctree: Any) -> None:
    """``doctree-read``: remove raw HTML that loads scripts from other hosts.

    sphinx-gallery's execution-time tables load jQuery and DataTables from CDNs to
    make the table sortable. A static site that must work offline and from disk
    cannot depend on them; the table is already sorted, slowest first.
    """
    from docutils import nodes

    for raw in list(doctree.findall(nodes.raw)):
        if "html" in raw.get("format", "") and _REMOTE_SCRIPT.search(raw.astext()):
            raw.parent.remove(raw)


_ROLE = re.compile(
    r":(?:py:)?(func|class|meth|attr|mod|data|obj|exc|term|doc):`([^`]+)`"
)


def _role_as_markdown(match: re.Match[str]) -> str:
    role, text = match.groups()
    explicit = re.fullmatch(r"(.*?)\s*<[^<>]+>", text, re.DOTALL)
    if explicit:
        text = explicit.group(1)
    elif text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return text if role in {"term", "doc"} else f"`{text}`"


def notebook_markdown(text: str) -> str:
    """Sphinx roles in notebook Markdown, as a reader of the notebook should see them.

    sphinx-gallery writes the prose of an example into the notebook as it is, so
    ``:class:`~torch.nn.Parameter``` would show literally; it becomes ```Parameter```
    (code), and ``:term:`tie``` becomes ``tie``.

    >>> from weightshare.gallery import notebook_markdown
    >>> notebook_markdown("one :class:`~torch.nn.Parameter`, :func:`weightshare.tie`")
    'one `Parameter`, `weightshare.tie`'
    >>> notebook_markdown(":class:`nn.Linear <torch.nn.Linear>` and a :term:`tie`")
    '`nn.Linear` and a tie'
    """
    return _ROLE.sub(_role_as_markdown, text)


def _clean_notebook(raw: str) -> str:
    import json

    notebook = json.loads(raw)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            source = cell["source"]
            text = "".join(source) if isinstance(source, list) else source
            cell["source"] = notebook_markdown(text)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def clean_notebooks(app: Any) -> None:
    """``builder-inited``, after sphinx-gallery: Markdown roles in the notebooks.

    Rewrites the gallery's ``.ipynb`` files with :func:`notebook_markdown`, and the
    copies inside sphinx-gallery's zip files, before Sphinx copies them to the site.
    """
    import zipfile

    conf = getattr(app.config, "sphinx_gallery_conf", {}) or {}
    dirs = conf.get("gallery_dirs", [])
    for gallery in [dirs] if isinstance(dirs, str) else dirs:
        root = Path(app.srcdir) / gallery
        for notebook in root.rglob("*.ipynb"):
            raw = notebook.read_text(encoding="utf-8")
            if notebook_markdown(raw) != raw:
                notebook.write_text(_clean_notebook(raw), encoding="utf-8")
        for archive in root.rglob("*.zip"):
            with zipfile.ZipFile(archive) as old:
                members = [(info, old.read(info)) for info in old.infolist()]
            changed = [
                (info, _clean_notebook(data.decode()).encode())
                if info.filename.endswith(".ipynb")
                and notebook_markdown(data.decode()) != data.decode()
                else (info, data)
                for info, data in members
            ]
            if changed != members:
                with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as new:
                    for info, data in changed:
                        new.writestr(info, data)


def resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """``missing-reference``: retry a reference under its documented name.

    ``weightshare_reference_aliases`` maps a name Python reports (for example
    ``torch.nn.modules.module.Module``, which autodoc writes for ``nn.Module``) to
    the name the other project documents it under (``torch.nn.Module``); the
    reference is then resolved through intersphinx.
    """
    from sphinx.ext.intersphinx import missing_reference

    alias = app.config.weightshare_reference_aliases.get(node.get("reftarget"))
    if alias is None:
        return None
    retry = node.deepcopy()
    retry["reftarget"] = alias
    return missing_reference(app, env, retry, contnode)


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: the doctest hook, and the run-it-yourself instructions.

    Registers :func:`mark_gallery_cells` on ``doctree-read`` and a math renderer,
    ``html_math_renderer = "mathml"``, that writes math as MathML
    (:func:`tex_to_mathml`). With the config value
    ``weightshare_wheel_project`` (a directory with a ``pyproject.toml``) it builds
    that project's wheel at the start of every build and offers it on each gallery
    page, next to the commands that install it with
    ``weightshare_run_requirements`` (:func:`add_run_instructions`).
    """
    # Math as MathML at build time: a static page that loads no MathJax from a CDN.
    app.add_html_math_renderer(
        "mathml", (_visit_math, None), (_visit_displaymath, None)
    )
    app.add_config_value("weightshare_run_requirements", [], "env", list)
    app.add_config_value("weightshare_wheel_project", "", "env", str)
    app.add_config_value("weightshare_reference_aliases", {}, "env", dict)
    app.connect("missing-reference", resolve_alias)
    app.connect("builder-inited", _offer_wheel)
    # After sphinx-gallery (priority 500) has written the notebooks and zip files.
    app.connect("builder-inited", clean_notebooks, priority=600)
    # Before Sphinx's own doctree-read handlers (priority 500), which collect the
    # download links this adds.
    app.connect("doctree-read", add_run_instructions, priority=400)
    app.connect("doctree-read", mark_gallery_cells)
    app.connect("doctree-read", drop_remote_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
