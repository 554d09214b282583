# weightshare: build the site and run the tests. `make` alone lists the targets.
# Every target sets up what it needs: the virtual environment in .venv (created and
# filled from requirements.txt when missing or out of date) and Graphviz's `dot`.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
BUILD    := _build
SPHINX   := $(PY) -m sphinx -c . -W --keep-going -n -d $(BUILD)/doctrees $(SPHINXOPTS)
EXAMPLE  ?=

.DEFAULT_GOAL := help
.PHONY: help html html-noplot html-rerun html-one doctest mutants linkcheck check test clean dot browser venv versions

help:  ## list the targets (this text)
	@echo "Targets (each creates .venv and installs Graphviz's dot when missing):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv and install the pinned requirements and the library

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
	  --no-build-isolation -e .
	@# mypy's first run reads the installed torch (about 45 s); later runs reuse
	@# .mypy_cache. Filled here, where the packages change, not in `make check`.
	-@$(PY) -m mypy > /dev/null
	@touch $(STAMP)

# $(call apt-or-explain,WHAT,PACKAGES,OTHER WAYS): install Debian PACKAGES with apt
# when root, else stop with a message that names them.
define apt-or-explain
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    echo "$(1) missing: installing the package(s) '$(2)' with apt"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq $(2) >/dev/null; \
  else \
    echo "error: $(1) missing. Install the system package(s) '$(2)'" \
         "(Debian/Ubuntu: sudo apt-get install $(2); $(3)), then run make again." >&2; \
    exit 1; \
  fi
endef

dot:  ## check for Graphviz's dot; install it with apt when missing and root
	@command -v dot >/dev/null 2>&1 || { \
	  $(call apt-or-explain,Graphviz's 'dot' program is,graphviz,macOS: brew install graphviz); }

browser:  ## check for Chromium and ChromeDriver (browser tests); apt-install them
	@{ command -v chromedriver && { command -v chromium || command -v chromium-browser \
	   || command -v google-chrome; }; } >/dev/null 2>&1 || { \
	  $(call apt-or-explain,Chromium or ChromeDriver is,chromium chromium-driver,macOS: brew install chromium chromedriver); }

html: $(STAMP) dot  ## build the site into _build/html, running changed examples
	$(SPHINX) -b html docs $(BUILD)/html

html-noplot: $(STAMP) dot  ## build the pages without running any example
	$(SPHINX) -b html -D plot_gallery=0 docs $(BUILD)/html

html-rerun: $(STAMP) dot  ## build, re-running every example (after changing src/)
	$(SPHINX) -b html -D sphinx_gallery_conf.run_stale_examples=True docs $(BUILD)/html

html-one: $(STAMP) dot  ## build one example: make html-one EXAMPLE=plot_3_siamese
	@test -n "$(EXAMPLE)" || { echo "usage: make html-one EXAMPLE=plot_name" >&2; exit 2; }
	$(SPHINX) -b html -D sphinx_gallery_conf.filename_pattern=/$(EXAMPLE) \
	  -D sphinx_gallery_conf.run_stale_examples=True docs $(BUILD)/html

doctest: $(STAMP) dot  ## check every >>> claim of the docs and gallery pages
	$(SPHINX) -b doctest docs $(BUILD)/doctest

mutants: $(STAMP)  ## apply each page's breaking edits; show which doctest caught each
	$(PY) -m pytest -q -s -p no:cacheprovider tests/site/test_mutants.py

linkcheck: html  ## check links and anchors offline; list the external links
	$(SPHINX) -b linkcheck docs $(BUILD)/linkcheck
	$(PY) -m pytest -q -p no:cacheprovider tests/site/test_docs.py -k internal_links
	@echo "External links (listed, not fetched; WEIGHTSHARE_LINKCHECK_EXTERNAL=1 fetches):"
	@$(PY) -c "import json; [print('  ' + r['uri']) for r in map(json.loads, \
	  open('$(BUILD)/linkcheck/output.json')) if r['status'] == 'ignored']"

versions: $(STAMP)  ## run the failures' reproductions under old releases (not in test)
	OMP_NUM_THREADS=1 $(PY) benchmarks/versions.py

# Two pytest workers (pytest-xdist), one thread each. mypy keeps its cache in
# .mypy_cache (filled when .venv is made), so its test re-checks only what changed.
check: $(STAMP)  ## tests/lib, tests/benchmarks and doctests, less those marked slow
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" \
	  -n 2 --dist worksteal tests/lib tests/benchmarks src/weightshare
	@# pytest-xdist's summary does not count the deselected tests: say so here.
	@echo "make check left out the tests marked slow; make test runs them."

# Two workers, one thread each; each file's tests stay on one worker (--dist loadfile),
# so a file's expensive module fixtures (the notebook runs) are made once.
test: $(STAMP) dot browser  ## run every test (library, doctests, browser, downloads, lint)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --cov \
	  --cov-report=term-missing:skip-covered --durations=12

clean:  ## remove the built site and generated pages (keeps .venv and test venvs)
	@# _build/download-envs holds the download tests' virtual environments: kept like
	@# .venv, because making them again costs minutes of pip.
	find $(BUILD) -mindepth 1 -maxdepth 1 ! -name download-envs -exec rm -rf {} + \
	  2>/dev/null || true
	rm -rf build docs/auto_examples docs/gen_modules docs/sg_execution_times.rst \
	  docs/_wheel
