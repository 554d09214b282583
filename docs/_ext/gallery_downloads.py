"""Every gallery page can be run at home: a wheel, the commands, clean notebooks.

As an extension (``"gallery_downloads"`` in ``extensions``), at the start of every
build it makes the wheel of the project named by ``weightshare_wheel_project`` (kept
while up to date) and offers it on each gallery page, in a box with the commands that
create a fresh virtual environment, install what the page needs and that wheel, and
run the page's script (:func:`add_run_instructions`). It also rewrites the Sphinx
roles in the gallery's notebooks as Markdown (:func:`clean_notebooks`), since
sphinx-gallery copies the prose into them as it is, and gives each notebook a first
cell that installs the same as its page's box.

What a page needs is read from its own imports (:func:`page_requirements`):
``weightshare_import_requirements`` maps each importable name a page may use to the
distributions it needs, each installed at its pin in ``weightshare_run_requirements``.
So a page that imports only ``torch`` and ``graphviz`` installs only those, and a page
importing a module that the map lacks fails the build with a message naming both.
Without the map, every page installs every pin.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.1"

_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")


def _sources_key(project: Path) -> str:
    """A digest of the files ``project``'s wheel is built from: names and mtimes.

    A file added, changed or deleted changes it; ``__pycache__``, ``build`` and
    ``*.egg-info`` (written by imports and builds, not sources) do not.
    """
    files = [project / "pyproject.toml", *(project / "src").rglob("*")]
    built = {"__pycache__", "build"}
    lines = sorted(
        f"{f.relative_to(project).as_posix()}:{f.stat().st_mtime_ns}"
        for f in files
        if f.is_file()
        and not built.intersection(f.relative_to(project).parts)
        and not any(p.endswith(".egg-info") for p in f.relative_to(project).parts)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def build_wheel(project: str | Path, dest: str | Path) -> Path:
    """Build the wheel of ``project`` into ``dest``; reuse it while it is up to date.

    A wheel already in ``dest`` is kept while the files of ``project/src`` and its
    ``pyproject.toml`` are the ones it was built from (none added, changed or
    deleted), so a rebuild with nothing changed costs nothing. The wheel is built
    with the running Python's pip, without build isolation (the build backend must
    be installed) and without dependencies, after removing setuptools' ``build/``
    folder: setuptools copies modules there and never deletes one, so a module
    removed from ``src/`` would otherwise still ship in the wheel.

    Raises
    ------
    RuntimeError
        If pip fails; the message has pip's output.
    """
    project, dest = Path(project), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    key, stamp = _sources_key(project), dest / "sources.sha256"
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) == 1 and stamp.is_file() and stamp.read_text() == key:
        return wheels[0]
    for old in wheels:
        old.unlink()
    shutil.rmtree(project / "build", ignore_errors=True)
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
    stamp.write_text(key)
    return wheels[0]


def _offer_wheel(app: Any) -> None:
    """``builder-inited``: build the configured wheel into ``<srcdir>/_wheel``."""
    project = app.config.weightshare_wheel_project
    if project:
        dest = Path(app.srcdir) / "_wheel"
        app.env.weightshare_wheel = build_wheel(project, dest).name


def page_imports(source: str) -> set[str]:
    """The top-level names of the modules that the Python ``source`` imports.

    Relative imports are left out, and so are modules of the standard library.

    >>> from gallery_downloads import page_imports
    >>> sorted(page_imports("import os, torch.nn\\nfrom sklearn.svm import SVC"))
    ['sklearn', 'torch']
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names)


def page_requirements(
    source: str, pins: Sequence[str], needs: Mapping[str, Sequence[str]]
) -> list[str]:
    """The pins of ``pins`` that a page with this ``source`` needs, in their order.

    ``needs`` maps an importable name to the distributions it needs (``"sklearn":
    ["scikit-learn"]``); an empty map means every pin.

    Raises
    ------
    ValueError
        If the page imports a name that ``needs`` lacks, or ``needs`` names a
        distribution that ``pins`` does not pin.

    >>> from gallery_downloads import page_requirements
    >>> pins = ["torch==2.13.0", "scikit-learn==1.8.0", "numpy==2.4.6"]
    >>> needs = {"torch": ["torch"], "sklearn": ["scikit-learn", "numpy"]}
    >>> page_requirements("import torch", pins, needs)
    ['torch==2.13.0']
    >>> page_requirements("import sklearn, torch", pins, needs)
    ['torch==2.13.0', 'scikit-learn==1.8.0', 'numpy==2.4.6']
    """
    if not needs:
        return list(pins)
    by_name = {pin.partition("==")[0].lower(): pin for pin in pins}
    wanted: set[str] = set()
    for module in sorted(page_imports(source)):
        if module not in needs:
            raise ValueError(
                f"the page imports {module!r}, which weightshare_import_requirements "
                f"does not map to distributions (it maps {sorted(needs)}): add "
                f"{module!r} to it, with the distributions it needs."
            )
        for dist in needs[module]:
            if dist.lower() not in by_name:
                raise ValueError(
                    f"weightshare_import_requirements[{module!r}] names {dist!r}, "
                    "which weightshare_run_requirements does not pin."
                )
            wanted.add(dist.lower())
    return [pin for name, pin in by_name.items() if name in wanted]


def _page_source(srcdir: str | Path, docname: str) -> str | None:
    """The example script beside a generated gallery page, if there is one."""
    script = Path(srcdir) / f"{docname}.py"
    return script.read_text(encoding="utf-8") if script.is_file() else None


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
    requirements = list(app.config.weightshare_run_requirements)
    source = _page_source(app.srcdir, app.env.docname)
    if source is not None:
        try:
            requirements = page_requirements(
                source,
                requirements,
                getattr(app.config, "weightshare_import_requirements", {}),
            )
        except ValueError as err:
            from sphinx.util import logging

            logging.getLogger(__name__).warning(
                f"{script}: {err}", location=app.env.docname
            )
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
    commands = run_commands(requirements, wheel, script)
    box += nodes.literal_block(
        commands, commands, language="bash", classes=["ws-run-commands"]
    )
    box += nodes.paragraph(
        text="These are the packages this page imports, at the versions it was "
        "built and tested with. A notebook installs the same in its first cell: "
        "open it in Jupyter from that folder and run all cells. Drawing graphs "
        "also needs Graphviz's dot program (the system package graphviz)."
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

    >>> from gallery_downloads import notebook_markdown
    >>> notebook_markdown("one :class:`~torch.nn.Parameter`, :func:`weightshare.tie`")
    'one `Parameter`, `weightshare.tie`'
    >>> notebook_markdown(":class:`nn.Linear <torch.nn.Linear>` and a :term:`tie`")
    '`nn.Linear` and a tie'
    """
    return _ROLE.sub(_role_as_markdown, text)


def notebook_first_cell(first_cell: str, requirements: Sequence[str]) -> str:
    """``first_cell`` with the packages of its ``%pip install`` line replaced by
    ``requirements`` (files named there, such as the wheel, are kept).

    >>> from gallery_downloads import notebook_first_cell
    >>> notebook_first_cell("# set-up\\n%pip install a==1 b==2 w.whl", ["b==2"])
    '# set-up\\n%pip install b==2 w.whl'
    """
    lines = first_cell.split("\n")
    for n, line in enumerate(lines):
        if line.startswith("%pip install "):
            words = line.removeprefix("%pip install ").split()
            files = [word for word in words if not _PIN.fullmatch(word)]
            lines[n] = "%pip install " + " ".join([*requirements, *files])
    return "\n".join(lines)


def _cleaned(raw: str, first_cell: str | None) -> str | None:
    """The notebook ``raw`` with Markdown roles and the configured first cell, or
    ``None`` when it already has both."""
    import json

    notebook = json.loads(raw)
    changed = False
    for cell in notebook["cells"]:
        source = cell["source"]
        text = "".join(source) if isinstance(source, list) else source
        if cell["cell_type"] == "markdown" and notebook_markdown(text) != text:
            cell["source"], changed = notebook_markdown(text), True
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    if first_cell and code and "".join(code[0]["source"]) != first_cell:
        # sphinx-gallery writes the first cell only for the examples it runs, so
        # after conf.py changes it, the other notebooks would keep the old one.
        code[0]["source"], changed = first_cell, True
    if not changed:
        return None
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def clean_notebooks(app: Any) -> None:
    """``builder-inited``, after sphinx-gallery: the notebooks as readers need them.

    Rewrites the Sphinx roles in the gallery's ``.ipynb`` files as Markdown
    (:func:`notebook_markdown`) and gives every notebook the configured
    ``first_notebook_cell`` (sphinx-gallery updates it only in the notebooks of the
    examples it re-runs), in the files and in the copies inside sphinx-gallery's zip
    files, before Sphinx copies them to the site.
    """
    import zipfile

    conf = getattr(app.config, "sphinx_gallery_conf", {}) or {}
    configured = conf.get("first_notebook_cell")
    pins = list(getattr(app.config, "weightshare_run_requirements", []))
    needs = getattr(app.config, "weightshare_import_requirements", {})
    dirs = conf.get("gallery_dirs", [])
    first_cells: dict[str, str | None] = {}
    for gallery in [dirs] if isinstance(dirs, str) else dirs:
        root = Path(app.srcdir) / gallery
        for notebook in root.rglob("*.ipynb"):
            first_cell = configured
            script = notebook.with_suffix(".py")
            if configured and script.is_file():
                try:
                    wanted = page_requirements(script.read_text("utf-8"), pins, needs)
                except ValueError:  # add_run_instructions reports it, with the page
                    wanted = pins
                first_cell = notebook_first_cell(configured, wanted)
            first_cells[notebook.name] = first_cell
            text = _cleaned(notebook.read_text(encoding="utf-8"), first_cell)
            if text is not None:
                notebook.write_text(text, encoding="utf-8")
        for archive in root.rglob("*.zip"):
            with zipfile.ZipFile(archive) as old:
                members = [(info, old.read(info)) for info in old.infolist()]
            changed = [
                (info, text.encode())
                if info.filename.endswith(".ipynb")
                and (
                    text := _cleaned(
                        data.decode(),
                        first_cells.get(Path(info.filename).name, configured),
                    )
                )
                is not None
                else (info, data)
                for info, data in members
            ]
            if changed != members:
                with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as new:
                    for info, data in changed:
                        new.writestr(info, data)


def check_config(app: Any, config: Any) -> None:
    """``config-inited``: the requirements are exact pins, the project has a build file.

    Raises
    ------
    sphinx.errors.ConfigError
        If an entry of ``weightshare_run_requirements`` is not ``name==version``, or
        ``weightshare_wheel_project`` is set but has no ``pyproject.toml``.
    """
    requirements = config.weightshare_run_requirements
    if not isinstance(requirements, (list, tuple)):
        raise ConfigError(
            "weightshare_run_requirements must be a list of 'name==version' strings, "
            f"got {type(requirements).__name__}."
        )
    for entry in requirements:
        if not isinstance(entry, str) or not _PIN.fullmatch(entry):
            raise ConfigError(
                f"weightshare_run_requirements: {entry!r} is not an exact pin "
                "'name==version'; the run box must name the versions the page was "
                "built with."
            )
    needs = getattr(config, "weightshare_import_requirements", {})
    if not isinstance(needs, dict) or not all(
        isinstance(dists, (list, tuple)) and all(isinstance(d, str) for d in dists)
        for dists in needs.values()
    ):
        raise ConfigError(
            "weightshare_import_requirements must map an importable name to a list "
            f"of distribution names, got {needs!r}."
        )
    pinned = {entry.partition("==")[0].lower() for entry in requirements}
    unpinned = sorted(
        {d for dists in needs.values() for d in dists if d.lower() not in pinned}
    )
    if unpinned:
        raise ConfigError(
            f"weightshare_import_requirements names {unpinned}, which "
            "weightshare_run_requirements does not pin: add their pins there."
        )
    project = config.weightshare_wheel_project
    if project and not (Path(project) / "pyproject.toml").is_file():
        raise ConfigError(
            f"weightshare_wheel_project is {project!r}, which has no pyproject.toml: "
            "name the directory of the project whose wheel the pages offer, or '' "
            "to offer none."
        )


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: the wheel, the run box and the notebooks' Markdown."""
    app.add_config_value("weightshare_run_requirements", [], "env", list)
    app.add_config_value("weightshare_import_requirements", {}, "env", dict)
    app.add_config_value("weightshare_wheel_project", "", "env", str)
    app.connect("config-inited", check_config)
    app.connect("builder-inited", _offer_wheel)
    # After sphinx-gallery (priority 500) has written the notebooks and zip files.
    app.connect("builder-inited", clean_notebooks, priority=600)
    # Before Sphinx's own doctree-read handlers (priority 500), which collect the
    # download links this adds.
    app.connect("doctree-read", add_run_instructions, priority=400)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
