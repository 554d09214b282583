"""The built site works offline and from disk, and links other projects' names.

As an extension (``"offline_site"`` in ``extensions``):

- math is written as MathML at build time (``html_math_renderer = "mathml"``,
  :func:`tex_to_mathml`), so no MathJax is loaded from a CDN;
- raw HTML that loads scripts from other hosts is dropped (:func:`drop_remote_scripts`;
  sphinx-gallery's execution-time tables load jQuery and DataTables so);
- a reference that does not resolve is retried under the name another project
  documents it by (``weightshare_reference_aliases``, :func:`resolve_alias`), so
  intersphinx links ``torch.nn.modules.module.Module`` to ``torch.nn.Module``.
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.0"

_REMOTE_SCRIPT = re.compile(r"<script[^>]+src=[\"']?(https?:)?//", re.IGNORECASE)


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


def check_config(app: Any, config: Any) -> None:
    """``config-inited``: the aliases map names to names.

    Raises
    ------
    sphinx.errors.ConfigError
        If ``weightshare_reference_aliases`` is not a dict of strings to strings.
    """
    aliases = config.weightshare_reference_aliases
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise ConfigError(
            "weightshare_reference_aliases must map each name Python reports to the "
            "name the other project documents (str -> str), got "
            f"{aliases!r}."
        )


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: MathML, no remote scripts, reference aliases."""
    # Math as MathML at build time: a static page that loads no MathJax from a CDN.
    app.add_html_math_renderer(
        "mathml", (_visit_math, None), (_visit_displaymath, None)
    )
    app.add_config_value("weightshare_reference_aliases", {}, "env", dict)
    app.connect("config-inited", check_config)
    app.connect("missing-reference", resolve_alias)
    app.connect("doctree-read", drop_remote_scripts)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
