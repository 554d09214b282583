"""Set-up shared by every test folder.

``tests/lib`` needs no Sphinx build, browser or download (``make check`` runs it
with ``tests/benchmarks``); ``tests/site`` builds and serves the site (``make test``
runs every folder).
"""

import sys
from pathlib import Path

# The site's Sphinx extensions (tests/site/test_site_extensions.py and the benchmarks
# page's tabulation in tests/benchmarks/), as conf.py finds them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
