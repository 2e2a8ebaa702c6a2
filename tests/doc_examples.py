"""Runs the ```python blocks of a markdown page, in order, in one namespace (docs are tested code).

Blocks fenced with another language (```text, ```bash) are shown but not run.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def run_page(path: Path) -> dict:
    """Execute every python block of ``path``; return the namespace they ran in."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert blocks, f"{path.name} has no python example"
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    state = torch.random.get_rng_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for index, code in enumerate(blocks):
                exec(compile(code, f"{path}#block{index + 1}", "exec"), namespace)
    finally:
        torch.random.set_rng_state(state)
    return namespace
