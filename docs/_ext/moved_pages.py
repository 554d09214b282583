"""Pages that moved keep their old address: a small page there sends the reader on.

As an extension (``"moved_pages"`` in ``extensions``): ``weightshare_moved_pages`` maps
an old document name (``auto_examples/basics/plot_two_layers_one_weight``) to the
document that replaced it. After an html build, each old address holds a page that
redirects at once (``<meta http-equiv="refresh">``, with a ``canonical`` link for search
engines) and says where the page went, for a reader whose browser does not follow it.
A bookmark, a link in an issue or a search result thus lands on the page it meant.
"""

from __future__ import annotations

import html
import posixpath
import urllib.parse
from pathlib import Path
from typing import Any

from sphinx.errors import ConfigError

__version__ = "1.0"


def redirect_html(old: str, new: str, title: str) -> str:
    """The page written at ``old``'s address, sending the reader to ``new``.

    ``old`` and ``new`` are document names (no ``.html``); the link is relative, so
    the site works from disk and from any web server path.
    """
    target = posixpath.relpath(new, posixpath.dirname(old) or ".") + ".html"
    target = urllib.parse.quote(target)  # as Sphinx links a page: "a b" -> "a%20b"
    href, name = html.escape(target, quote=True), html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Moved: {name}</title>\n"
        # No icon: a browser would otherwise ask the server's root for favicon.ico,
        # which a site served below a path (or from disk) does not have.
        '<link rel="icon" href="data:,">\n'
        f'<link rel="canonical" href="{href}">\n'
        f'<meta http-equiv="refresh" content="0; url={href}">\n'
        "</head>\n<body>\n"
        f'<p>This page moved: <a href="{href}">{name}</a>.</p>\n'
        "</body>\n</html>\n"
    )


def check_config(app: Any, config: Any) -> None:
    """Refuse a map whose entries are not pairs of document names."""
    moved = config.weightshare_moved_pages
    if not isinstance(moved, dict):
        raise ConfigError(
            f"weightshare_moved_pages must be a dict of old -> new document names, "
            f"not {type(moved).__name__}"
        )
    for old, new in moved.items():
        if not (isinstance(old, str) and isinstance(new, str)) or old.endswith(".html"):
            raise ConfigError(
                f"weightshare_moved_pages: {old!r} -> {new!r} must map document "
                "names (strings without '.html')"
            )
        for name in (old, new):
            if name.startswith("/") or ".." in name.split("/"):
                raise ConfigError(
                    f"weightshare_moved_pages: {name!r} must be a document name "
                    "inside the site (no leading '/', no '..')"
                )


def write_redirects(app: Any, exception: Exception | None) -> None:
    """After an html build, write a redirecting page at each old address."""
    if exception is not None or app.builder.format != "html":
        return
    env = app.builder.env
    for old, new in app.config.weightshare_moved_pages.items():
        if old in env.found_docs:
            raise ConfigError(
                f"weightshare_moved_pages: {old!r} is still a page of this site; "
                "remove it from the map or from the sources"
            )
        if new not in env.found_docs:
            raise ConfigError(
                f"weightshare_moved_pages: {old!r} moved to {new!r}, which is not a "
                "page of this site"
            )
        title = env.titles[new].astext() if new in env.titles else new
        path = Path(app.outdir, old + ".html")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(redirect_html(old, new, title), encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: redirecting pages at the old addresses."""
    app.add_config_value("weightshare_moved_pages", {}, "html", dict)
    app.connect("config-inited", check_config)
    app.connect("build-finished", write_redirects)
    return {
        "version": __version__,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
