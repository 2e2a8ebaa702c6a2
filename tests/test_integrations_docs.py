"""Every ```python block of the integration pages runs, in order, one namespace per page.

The pages check their own results with asserts; the test also insists that they do.
"""

from __future__ import annotations

import pytest

from tests.doc_examples import DOCS, python_blocks, run_page

PAGES = ["integrations/transformers.md", "integrations/mmcv_detrex.md", "integrations/custom_module.md", "msda.md"]


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n```text\nnot run\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    assert "assert" in "".join(python_blocks(text)), f"{page}: the examples should check their results"
    run_page(DOCS / page)
