"""The README's Python snippets run as they are written, each on its own, in an empty folder.

A snippet that stopped working (a renamed function, a changed signature) fails here, not in a reader's hands.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets():
    """(first code line, code) of every ```python block in the README, in order."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    return [(block.strip().splitlines()[0], block) for block in blocks]


def test_the_readme_has_snippets():
    assert len(python_snippets()) >= 3


@pytest.mark.parametrize("first_line, code", python_snippets(), ids=[f"snippet{i}" for i, _ in enumerate(python_snippets())])
def test_readme_snippet_runs(first_line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # files the snippet writes (runs/...) land in a temporary folder
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, f"README.md snippet starting {first_line!r}", "exec"), {"__name__": "__readme__"})
