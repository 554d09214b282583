"""The site builds without warnings, its doctests pass, and a false claim fails them.

These tests call the Makefile's own targets, so they check what a reader runs. `make
html` comes first: the gallery examples it runs are cached for the doctest build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import HTML, ROOT, make

FIRST_PAGE = ROOT / "examples" / "learn" / "plot_1_two_layers_one_weight.py"
TARGETS = (
    "html",
    "html-noplot",
    "html-rerun",
    "html-one",
    "doctest",
    "mutants",
    "versions",
    "linkcheck",
    "browser",
)


def test_make_help_is_the_default_and_lists_every_target() -> None:
    result = make()
    assert result.returncode == 0
    for target in (*TARGETS, "test", "clean", "help"):
        assert f"make {target} " in result.stdout


def test_a_second_build_installs_nothing() -> None:
    plan = make("-n", "html").stdout  # what make would run, without running it
    assert "pip install" not in plan
    assert "python3 -m venv" not in plan
    dot = make("dot")  # present now, so the check is silent and installs nothing
    assert dot.returncode == 0
    assert dot.stdout == ""
    browser = make("browser")  # likewise for Chromium and its driver
    assert browser.returncode == 0
    assert browser.stdout == ""


@pytest.mark.slow
def test_html_builds_with_zero_warnings(built_site: Path) -> None:
    # built_site (conftest.py) ran `make html` and found no warning.
    page = (
        built_site / "auto_examples/learn/plot_1_two_layers_one_weight.html"
    ).read_text()
    assert re.search(r'<img [^>]*class="[^"]*ws-graphviz[^"]*"[^>]*\.svg"', page)
    assert "graphviz.graphs.Digraph" not in page  # the graph is drawn, not printed
    text = re.sub(r"<[^>]+>", "", page)  # code is split into highlighted spans
    assert ">>> out.item()\n12.0" in text.replace("&gt;", ">")  # a doctest, shown


@pytest.mark.slow
def test_the_site_is_static_and_self_contained(built_site: Path) -> None:
    """No page loads a script or stylesheet from another host (MathJax, CDNs)."""
    remote = re.compile(r'<(script|link)[^>]+(src|href)="(https?:)?//[^"]+"')
    for page in built_site.rglob("*.html"):
        found = remote.search(page.read_text(errors="replace"))
        assert found is None, f"{page.relative_to(built_site)}: {found and found[0]}"
    first = built_site / "auto_examples/learn/plot_1_two_layers_one_weight.html"
    assert "<math" in first.read_text()  # the chain rule, as MathML
    assert (built_site / ".nojekyll").exists()  # GitHub Pages serves _static/


#: Pages that draw no figure, so sphinx-gallery shows its placeholder thumbnail. Each
#: should gain a figure that carries its claim; the list keeps the gap visible.
NO_FIGURE_YET = {
    "plot_4_gpu_training_step",
    "plot_gguf_tied",
    "plot_hooks_checkpointing",
    "plot_merge_export_tied",
    "plot_module_conversion",
    "plot_onnx_tied",
    "plot_quantize_tied",
    "plot_resize_vocabulary",
    "plot_transformers_v5_ties",
}


@pytest.mark.slow
def test_every_example_has_its_own_thumbnail(built_site: Path) -> None:
    # A page's thumbnail is its own when the page shows an image it drew
    # (sphx_glr_<page>_NNN); otherwise sphinx-gallery resizes its placeholder, whose
    # bytes then differ from the original file, so comparing bytes cannot tell them
    # apart. The page's HTML is read, not _images/: Sphinx never deletes an image
    # there, so a figure a page no longer draws would still count.
    images = built_site / "_images"
    drawn = set()
    for example in sorted((ROOT / "examples").glob("*/plot_*.py")):
        thumbs = list(images.glob(f"sphx_glr_{example.stem}_thumb.*"))
        assert thumbs, f"{example.stem} has no thumbnail"
        assert thumbs[0].stat().st_size > 2000, f"{thumbs[0].name} is nearly empty"
        page = (
            built_site / "auto_examples" / example.parent.name / f"{example.stem}.html"
        )
        shown = re.search(
            rf"_images/sphx_glr_{example.stem}_\d{{3}}\.", page.read_text()
        )
        if shown:
            drawn.add(example.stem)
    pages = {p.stem for p in (ROOT / "examples").glob("*/plot_*.py")}
    assert pages - drawn == NO_FIGURE_YET, "pages with the placeholder thumbnail"


@pytest.mark.slow
def test_no_page_shows_a_plotting_calls_return_value(built_site: Path) -> None:
    # A cell that ends in ``ax.set_title(...)`` shows "Text(0.5, 1.0, ...)".
    leak = re.compile(r"&lt;matplotlib\.|\bText\(0\.5, |\[&lt;matplotlib")
    for page in sorted(built_site.glob("auto_examples/*/plot_*.html")):
        found = leak.search(page.read_text())
        assert found is None, f"{page.name} shows {found.group(0)!r}"


def test_the_offered_wheel_holds_the_library_only(built_site: Path) -> None:
    import zipfile

    (wheel,) = (built_site / "_downloads").rglob("weightshare-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        modules = {
            name for name in archive.namelist() if name.startswith("weightshare/")
        }
    assert "weightshare/models.py" in modules
    assert not any("gallery" in name or "sphinx" in name for name in modules)


def test_each_quoted_error_is_printed_by_its_page(built_site: Path) -> None:
    # The symptom index quotes error texts; each must be what its page shows.
    import html

    table = (ROOT / "docs" / "symptoms.md").read_text().split("## Silent")[0]
    rows = re.findall(r"^\| `([^`]+)` \|.*\{doc\}`/([^`]+)` \|$", table, re.M)
    assert len(rows) >= 8
    for quoted, docname in rows:
        page = (built_site / f"{docname}.html").read_text()
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        for part in quoted.split("…"):
            assert part.strip() in text, f"{docname} does not show {part.strip()!r}"


def test_the_symptom_index_links_every_fix_page() -> None:
    # The index is the Fix section's front door: a page no row leads to is lost.
    index = (ROOT / "docs" / "symptoms.md").read_text()
    linked = set(re.findall(r"\{doc\}`/auto_examples/([^`]+)`", index))
    fix_pages = {
        f"{page.parent.name}/{page.stem}"
        for page in (ROOT / "examples").glob("fix_*/plot_*.py")
    }
    assert fix_pages, "no Fix page found"
    missing = sorted(fix_pages - linked)
    assert not missing, f"docs/symptoms.md has no row for {missing}"


def test_pytorch_names_link_to_pytorchs_docs(built_site: Path) -> None:
    api = (built_site / "api.html").read_text()
    torch_docs = "https://docs.pytorch.org/docs/stable/"
    assert f'href="{torch_docs}generated/torch.nn.Module.html#torch.nn.Module"' in api
    assert f"{torch_docs}generated/torch.nn.parameter.Parameter.html" in api
    page = built_site / "auto_examples/learn/plot_4_gpu_training_step.html"
    assert f"{torch_docs}generated/torch.compile.html#torch.compile" in page.read_text()


@pytest.mark.slow
def test_doctests_of_every_page_pass() -> None:
    result = make("doctest")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = (ROOT / "_build/doctest/output.txt").read_text()
    assert re.search(r"\n\s*0 failures in tests", summary)
    tests = int(re.search(r"(\d+) tests\n", summary).group(1))  # type: ignore[union-attr]
    assert tests >= 20


def _scratch_site(tmp_path: Path, page_text: str) -> Path:
    """A one-page site that uses the project's conf.py and one gallery example."""
    docs, basics = tmp_path / "docs", tmp_path / "examples" / "learn"
    docs.mkdir(parents=True)
    basics.mkdir(parents=True)
    (docs / "index.md").write_text(
        "# Scratch\n\n```{toctree}\nauto_examples/index\n```\n"
    )
    shutil.copy(ROOT / "examples/GALLERY_HEADER.rst", tmp_path / "examples")
    shutil.copy(ROOT / "examples/learn/GALLERY_HEADER.rst", basics)
    (basics / FIRST_PAGE.name).write_text(page_text)
    return docs


def _doctest_scratch(docs: Path) -> subprocess.CompletedProcess[str]:
    # No -W here: the lone page's links to the API page cannot resolve in it. The
    # gallery is not run (plot_gallery=0); the doctest builder runs its cells.
    command = [sys.executable, "-m", "sphinx", "-c", str(ROOT), "-b", "doctest"]
    # No wheel either: building it would rewrite build/ and the egg-info in the
    # repository, beside the other worker's builds.
    command += ["-D", "plot_gallery=0", "-D", "weightshare_wheel_project="]
    command += [str(docs), str(docs.parent / "out")]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_a_false_claim_fails_the_doctest_build(tmp_path: Path) -> None:
    text = FIRST_PAGE.read_text()
    true_claim = "# >>> out.item()\n# 12.0\n"
    assert text.count(true_claim) == 1
    wrong = _doctest_scratch(
        _scratch_site(
            tmp_path / "wrong", text.replace(true_claim, "# >>> out.item()\n# 13.0\n")
        )
    )
    right = _doctest_scratch(_scratch_site(tmp_path / "right", text))
    assert right.returncode == 0, right.stdout[-3000:]
    assert wrong.returncode != 0
    output = wrong.stdout + wrong.stderr
    assert "Expected:\n    13.0\nGot:\n    12.0" in output
    assert "1 failure in tests" in output


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        for key in ("href", "src"):
            value = found.get(key)
            if value and not urlsplit(value).scheme and not value.startswith("//"):
                self.refs.append(value)


@pytest.mark.slow
def test_internal_links_and_anchors_resolve(built_site: Path) -> None:
    # _static/ holds the theme's own template fragments, not pages.
    pages = {p: _Links() for p in HTML.rglob("*.html") if "_static" not in p.parts}
    assert pages, "build the site first (test_html_builds_with_zero_warnings)"
    for path, parser in pages.items():
        parser.feed(path.read_text(errors="replace"))
    broken = []
    for path, parser in pages.items():
        for ref in parser.refs:
            parts = urlsplit(ref)
            target = (
                (path.parent / unquote(parts.path)).resolve() if parts.path else path
            )
            if not target.exists():
                broken.append(f"{path.relative_to(HTML)}: {ref}")
            elif target in pages and parts.fragment not in {"", *pages[target].ids}:
                broken.append(f"{path.relative_to(HTML)}: {ref} (no such anchor)")
    assert not broken, "\n".join(broken[:20])


@pytest.mark.slow
def test_old_page_addresses_send_the_reader_to_the_new_page(built_site: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import conf  # the map of moved pages, as the build read it

    assert conf.weightshare_moved_pages  # the gallery's old addresses
    for old, new in conf.weightshare_moved_pages.items():
        page = (built_site / f"{old}.html").read_text()
        target = re.search(r'url=([^"]+)"', page).group(1)  # type: ignore[union-attr]
        landing = (built_site / old).parent / target
        assert landing.resolve() == (built_site / f"{new}.html").resolve()
        assert landing.is_file(), f"{old} redirects to a missing {target}"
