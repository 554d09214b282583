"""The README's usage example runs as shown and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # imports transformers and saves a model: make test
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_prints_what_its_comments_say() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python block"
    code = blocks[0]
    expected = [
        line.partition("  # ")[2]
        for line in code.splitlines()
        if line.lstrip().startswith("print(")
    ]
    assert expected and all(expected), "each print(...) line needs '  # output'"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert out.getvalue().splitlines() == expected
