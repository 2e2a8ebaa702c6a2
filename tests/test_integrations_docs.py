"""Every ```python block of the integration pages runs, in order, one namespace per page.

Blocks fenced with another language (```text, ```bash) are shown but not run.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations"
PAGES = ["transformers.md", "mmcv_detrex.md", "custom_module.md"]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n```text\nnot run\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page):
    path = DOCS / page
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert blocks, f"{page} has no python example"
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    state = torch.random.get_rng_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for index, code in enumerate(blocks):
                exec(compile(code, f"{path}#block{index + 1}", "exec"), namespace)
    finally:
        torch.random.set_rng_state(state)
