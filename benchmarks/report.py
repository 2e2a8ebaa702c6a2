"""Writes one benchmark's results into its own section of docs/benchmarks.md.

Each script owns the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``; the rest of
the page is left alone, so scripts can be rerun in any order.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery section is written by the script it names; rerun the script to refresh it.\n"


def machine_description() -> str:
    """CPU model, threads torch uses, torch version, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def write_section(name: str, markdown: str, page: Path = PAGE) -> None:
    """Replace (or append) the section ``name`` of ``page`` with ``markdown``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = page.read_text(encoding="utf-8") if page.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text, encoding="utf-8")
