"""The documentation runs: every Python block of the README (and of the topic pages under docs/)
is executed, in order within its page, in a fresh working directory; a ``print`` whose line ends
in a comment starting with a value (``# 0.2685`` or ``# 0.75: …``) must print that value."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXPECTED = re.compile(r"^\s*print\(.*\)\s*#\s*([-+0-9.e]+)")


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def expected_values(block: str) -> list[str]:
    """The values the comments of a block's ``print`` lines promise, in order."""
    return [match.group(1).rstrip(".:") for line in block.splitlines()
            if (match := EXPECTED.match(line))]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_runs_and_prints_what_its_comments_say(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page), start=1):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, f"{page.name}, block {number}", "exec"), namespace)
        lines = printed.getvalue().splitlines()
        promised = expected_values(block)
        assert len(lines) >= len(promised), (page.name, number, lines)
        for value, line in zip(promised, lines[-len(promised):] if promised else [], strict=True):
            assert value in line, (page.name, number, value, line)


def test_the_readme_opens_with_the_news_example_in_bits():
    first = python_blocks(REPO / "README.md")[0]
    assert expected_values(first) == ["0.2685", "0.2789"]
