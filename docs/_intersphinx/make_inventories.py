"""Write the offline fallback inventories for intersphinx from the *.txt beside this.

conf.py maps PyTorch's and Python's docs with two locations each: the live
``objects.inv`` first and the file written here second. With the network, Sphinx
uses the live inventory; without it (these build machines reach no documentation
site), it falls back to this one, so that the names the site uses still link to the
right pages and a nitpicky build has nothing to warn about.

Each ``NAME.txt`` line is ``name role uri``, with ``$`` in the uri standing for the
name (Sphinx's own shorthand); lines starting with ``#`` are comments. Run
``python docs/_intersphinx/make_inventories.py`` after editing one; a test checks
that the ``.inv`` files match their ``.txt``.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inventory(source: Path) -> bytes:
    """The Sphinx inventory (version 2) for one ``.txt`` source."""
    lines = source.read_text().splitlines()
    project, version = lines[0].removeprefix("# ").split(" ", 1)
    entries = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            name, role, uri = line.split()
            entries.append(f"{name} {role} 1 {uri} -\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress("".join(sorted(entries)).encode(), 9)


def main() -> int:
    for source in sorted(HERE.glob("*.txt")):
        source.with_suffix(".inv").write_bytes(inventory(source))
        print(f"wrote {source.with_suffix('.inv').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
