"""Every ```python block of README.md runs as pasted, each in a real process in an empty
project folder (the embedded SQLite default; the installed examples ``gauges`` and ``chat``
importable).

- A block whose first line is ``# NAME.py ...`` is a module the reader saves under that name:
  every later block finds it in its folder (``from my_first_app import app``).
- A block that defines ``test_...`` functions is a test module: it is run by pytest.
- A block whose first line is ``# fragment: ...`` is deliberately not runnable on its own (an
  overview of calls): the only kind skipped.

A failure names the block by its line in README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MODULE_NAME = re.compile(r"# ([A-Za-z_]\w*\.py)\b")
FRAGMENT = "# fragment:"


@dataclass(frozen=True)
class Block:
    """One ```python block: the README line of its opening fence, and its code."""

    line: int
    code: str

    @property
    def module(self) -> str | None:
        """The file name a reader saves it under (``# NAME.py`` as its first line), if any."""
        found = MODULE_NAME.match(self.code)
        return found.group(1) if found else None

    @property
    def fragment(self) -> bool:
        return self.code.startswith(FRAGMENT)

    @property
    def is_tests(self) -> bool:
        return re.search(r"^def test_", self.code, re.MULTILINE) is not None


def blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, in order."""
    return [
        Block(text.count("\n", 0, found.start()) + 1, found.group(1))
        for found in FENCE.finditer(text)
    ]


BLOCKS = blocks(README.read_text())


def test_the_readme_has_python_blocks_and_each_fragment_says_why() -> None:
    assert len(BLOCKS) >= 3
    for block in BLOCKS:
        if block.fragment:
            reason = block.code.splitlines()[0].removeprefix(FRAGMENT).strip()
            assert reason, f"README.md line {block.line}: '# fragment:' without a reason"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_the_readme_python_block_runs_as_pasted(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if block.fragment:
        pytest.skip(f"README.md line {block.line}: {block.code.splitlines()[0]}")
    # The modules earlier blocks told the reader to save, and nothing else.
    for earlier in BLOCKS:
        if earlier.line < block.line and earlier.module:
            (tmp_path / earlier.module).write_text(earlier.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "PYTEST_"))}
    env["PYTHONPATH"] = str(tmp_path)
    if "postgres" in block.code:
        # The server a block needs (for the plugin's tests: a server it may use).
        env["STOREKEEPER_TEST_POSTGRES_URL"] = request.getfixturevalue("postgres_url")
    name = block.module or f"{'test_' if block.is_tests else ''}readme_line_{block.line}.py"
    (tmp_path / name).write_text(block.code)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", name]
    try:
        ran = subprocess.run(
            command if block.is_tests else [sys.executable, name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ```python block at README.md line {block.line} ran for over 120 s")
    assert ran.returncode == 0, (
        f"the ```python block at README.md line {block.line} failed (exit {ran.returncode})\n"
        f"--- block ---\n{block.code}--- stdout ---\n{ran.stdout}--- stderr ---\n{ran.stderr}"
    )
