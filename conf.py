"""Sphinx configuration of the weightshare site. Build it with `make html`.

The sources are in docs/ and the gallery scripts in examples/; this file stays at the
top of the repository, so every sphinx-build call passes `-c .` (see the Makefile).
"""

import os
import sys
from importlib.metadata import version as _version

ROOT = os.path.dirname(os.path.abspath(__file__))


def here(*parts: str) -> str:
    """A path in the repository: every path this file names starts at its root."""
    return os.path.join(ROOT, *parts)


def from_docs(*parts: str) -> str:
    """``here(*parts)`` relative to docs/: sphinx-gallery reads its paths that way."""
    return os.path.relpath(here(*parts), here("docs"))


# The site's own extensions, one concern each (docs/_ext/, as scikit-learn keeps
# doc/sphinxext/).
sys.path.insert(0, here("docs", "_ext"))

project = "weightshare"
author = "the weightshare authors"
copyright = "2026, the weightshare authors"
release = _version("weightshare")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.githubpages",  # .nojekyll, for a site published from a branch
    "sphinx.ext.intersphinx",
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "gallery_graphviz",  # autograd graphs drawn in pages; seeds
    "gallery_doctest",  # gallery code cells run inside `make doctest`
    "gallery_downloads",  # the wheel, the run box, notebooks in Markdown
    "offline_site",  # MathML, no CDN scripts, reference aliases
    "benchmark_results",  # docs/benchmarks.md from benchmarks/results/*.json
    "version_table",  # the symptom index's version table from versions-*.json
    "moved_pages",  # old addresses of moved pages redirect to the new ones
]

root_doc = "index"
myst_enable_extensions = ["attrs_block", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- API pages -------------------------------------------------------------------------
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
# PyTorch and Python names link to their docs. Each inventory has two locations: the
# live objects.inv, and an offline fallback with the names this site uses
# (docs/_intersphinx/; Sphinx only logs it when it falls back), so a build without
# the network links them too and stays free of warnings.
intersphinx_mapping = {
    "python": (
        "https://docs.python.org/3/",
        (None, here("docs", "_intersphinx", "python.inv")),
    ),
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        (None, here("docs", "_intersphinx", "torch.inv")),
    ),
}
intersphinx_timeout = 10
# Where PyTorch documents a class under another path than the one Python reports.
weightshare_reference_aliases = {
    "torch.nn.Parameter": "torch.nn.parameter.Parameter",
    "torch.nn.modules.module.Module": "torch.nn.Module",
    "torch.optim.optimizer.Optimizer": "torch.optim.Optimizer",
}
# Nitpicky builds resolve every cross-reference. numpydoc's "bool, default True" is
# not a type; typing's names are documented nowhere that autodoc links to.
nitpick_ignore_regex = [
    (r"py:.*", r"(optional|default.*)"),
    (r"py:.*", r"(collections\.abc|typing)\..*"),
]


# -- Running a downloaded example -----------------------------------------------------
# Each gallery page tells its reader how to run its script at home: a fresh virtual
# environment with the pinned packages the page imports and this library's wheel,
# which every build makes from src/ and offers for download
# (docs/_ext/gallery_downloads.py). The notebooks' first cell installs the same.
def _pins(*names: str) -> list[str]:
    """``name==version`` lines of requirements.txt, for the given package names."""
    pins = {}
    with open(here("requirements.txt")) as f:
        for line in f:
            name, _, pinned = line.strip().partition("==")
            pins[name.lower()] = f"{name}=={pinned}"
    return [pins[name] for name in names]


weightshare_run_requirements = _pins(
    "torch",
    "safetensors",
    "numpy",
    "matplotlib",
    "scikit-learn",
    "torchviz",
    "graphviz",
    "transformers",
    "peft",
    "accelerate",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "gguf",
)
# What each name a page imports needs installed (a page's box lists only those).
# weightshare's own dependencies, torch and safetensors, come with every page.
weightshare_import_requirements = {
    "weightshare": ["torch", "safetensors"],
    "torch": ["torch"],
    "safetensors": ["safetensors"],
    "numpy": ["numpy"],
    "matplotlib": ["matplotlib"],
    "sklearn": ["scikit-learn"],
    "graphviz": ["graphviz"],
    "torchviz": ["torchviz", "graphviz"],
    "transformers": ["transformers"],
    "peft": ["peft", "transformers", "accelerate"],
    "accelerate": ["accelerate"],
    # torch.onnx's default (dynamo) exporter needs onnxscript.
    "onnx": ["onnx", "onnxscript"],
    "onnxruntime": ["onnxruntime"],
    "gguf": ["gguf"],
}
weightshare_wheel_project = ROOT
WHEEL = f"weightshare-{release}-py3-none-any.whl"

# -- Gallery ---------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": from_docs("examples"),
    "gallery_dirs": from_docs("docs", "auto_examples"),
    "filename_pattern": r"/plot_",
    "subsection_order": [
        from_docs("examples", section)
        # Learn is a path; Fix follows a model's life (fix_build's header opens it).
        for section in (
            "learn",
            "fix_build",
            "fix_train",
            "fix_save_load",
            "fix_adapt",
            "fix_distribute",
            "fix_export",
        )
    ],
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("weightshare",),
    "backreferences_dir": from_docs("docs", "gen_modules", "backreferences"),
    "image_scrapers": ("matplotlib", "gallery_graphviz.graphviz_scraper"),
    "reset_modules": ("matplotlib", "gallery_graphviz.reset_seeds"),
    "ignore_repr_types": r"graphviz\.",
    "remove_config_comments": True,
    "min_reported_time": 0,
    "download_all_examples": True,
    "first_notebook_cell": (
        "# Installs what this example needs (skip it where they are installed).\n"
        "# The weightshare wheel must be in this notebook's folder: download it from\n"
        "# the bottom of the example's page. Drawing autograd graphs also needs\n"
        "# Graphviz's dot program (the system package 'graphviz').\n"
        f"%pip install {' '.join(weightshare_run_requirements)} {WHEEL}"
    ),
}

# -- Moved pages -----------------------------------------------------------------------
# Old address -> new page (docs/_ext/moved_pages.py writes a redirect at each old one).
# The gallery became Learn and Fix on 2026-12-02.
_MOVED = """
basics/index                             learn/index
architectures/index                      learn/index
training/index                           learn/index
pitfalls/index                           fix_build/index
distributed/index                        fix_distribute/index
basics/plot_two_layers_one_weight        learn/plot_1_two_layers_one_weight
architectures/plot_tied_transformer      learn/plot_2_tied_transformer
architectures/plot_siamese               learn/plot_3_siamese
training/plot_gpu_training_step          learn/plot_4_gpu_training_step
pitfalls/plot_meta_device_init           fix_build/plot_meta_device_init
pitfalls/plot_copies_not_ties            fix_build/plot_copies_not_ties
pitfalls/plot_optimizer_groups_clipping  fix_train/plot_optimizer_groups_clipping
pitfalls/plot_transforms_functional      fix_train/plot_transforms_functional
pitfalls/plot_save_load_tied             fix_save_load/plot_save_load_tied
pitfalls/plot_check_checkpoint           fix_save_load/plot_weightshare_check
pitfalls/plot_lora_tied_head             fix_adapt/plot_lora_tied_head
distributed/plot_ddp_tied                fix_distribute/plot_ddp_tied
distributed/plot_fsdp2_tied              fix_distribute/plot_fsdp2_tied
distributed/plot_pipeline_tied           fix_distribute/plot_pipeline_tied
"""
weightshare_moved_pages = {
    f"auto_examples/{old}": f"auto_examples/{new}"
    for old, new in map(str.split, _MOVED.strip().splitlines())
}

# -- Benchmark results (docs/benchmarks.md) --------------------------------------------
benchmark_results_dir = here("benchmarks", "results")
version_table_dir = here("benchmarks", "results")
plot_html_show_source_link = False
plot_html_show_formats = False

# -- Doctests (make doctest) -----------------------------------------------------------
doctest_global_setup = """
import warnings
import matplotlib
matplotlib.use("Agg")
warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
from gallery_graphviz import reset_seeds
reset_seeds(None, "")
"""

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "weightshare"
html_static_path = [here("docs", "_static")]
html_css_files = ["weightshare.css"]
html_math_renderer = "mathml"  # offline_site: static MathML, no MathJax
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc", "sg_download_links"],
}
html_show_sourcelink = False
# Example pages need the width for 88-column code: no left sidebar there (the top bar,
# the breadcrumbs and the previous/next links still navigate).
html_sidebars = {"auto_examples/*/plot_*": []}
html_favicon = here("docs", "_static", "favicon.svg")
html_search_scorer = here(
    "docs", "_static", "search_scorer.js"
)  # titles with the query first
# A reader who never chose a mode gets the system's; without this, the theme logs
# "Got invalid theme mode" to the console on a first visit.
html_context = {"default_mode": "auto"}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- make linkcheck --------------------------------------------------------------------
# Offline by default: internal links and files are checked, and external ones are
# listed in _build/linkcheck/output.txt as "ignored".
# WEIGHTSHARE_LINKCHECK_EXTERNAL=1 fetches them too.
if not os.environ.get("WEIGHTSHARE_LINKCHECK_EXTERNAL"):
    linkcheck_ignore = [r"https?://"]
