"""Docs are tested code: the ```python blocks of a markdown page run, and its ```bash blocks are read.

- :func:`run_page` runs the ```python blocks of a page, in order, in one namespace;
  :func:`run_marked_blocks` only those marked ``<!-- doc-test: run -->`` (on pages that also show
  listings with placeholder paths).
- :func:`shell_blocks` gives the commands of the ```bash blocks (continuation lines joined, comments
  dropped, ``&&`` chains split, leading ``NAME=value`` settings kept apart), with the marker of the
  block: an HTML comment ``<!-- doc-test: WORDS -->`` on the line just before the fence (invisible
  when the page is rendered). ``tests/test_readme.py`` runs the blocks marked ``run`` and checks that
  every other command parses.
"""

from __future__ import annotations

import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SHELL = re.compile(r"^(?:<!--\s*doc-test:\s*(?P<marker>[^>]*?)\s*-->[ \t]*\n)?```(?:bash|sh|shell)[ \t]*\n(?P<body>.*?)^```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_MARKED_PYTHON = re.compile(r"^<!--\s*doc-test:\s*(?P<marker>[^>]*?)\s*-->[ \t]*\n```python[ \t]*\n(?P<body>.*?)^```[ \t]*$",
                            re.MULTILINE | re.DOTALL)
_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


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


def marked_python_blocks(text: str, word: str = "run") -> list[str]:
    """The bodies of the ```python blocks marked ``<!-- doc-test: ... word ... -->``, in order."""
    return [m.group("body") for m in _MARKED_PYTHON.finditer(text) if word in m.group("marker").split()]


def run_marked_blocks(path: Path, word: str = "run") -> dict:
    """Execute the ```python blocks of ``path`` marked with ``word``, in order, in one namespace (warnings
    are left to the caller, who may record them); return the namespace."""
    blocks = marked_python_blocks(path.read_text(encoding="utf-8"), word)
    assert blocks, f"{path.name} has no python block marked doc-test: {word}"
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    state = torch.random.get_rng_state()
    try:
        for index, code in enumerate(blocks):
            exec(compile(code, f"{path}#marked{index + 1}", "exec"), namespace)
    finally:
        torch.random.set_rng_state(state)
    return namespace


@dataclass
class Command:
    """One shell command of a page: its words (after ``NAME=value`` settings), the settings, its line."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    line: str = ""


@dataclass
class ShellBlock:
    """A ```bash block: its marker words (``run``, ...; empty without a marker) and its commands."""

    marker: tuple[str, ...]
    commands: list[Command]
    text: str


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` that starts a word, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def parse_commands(body: str) -> list[Command]:
    """The commands of a shell block body (see the module docstring)."""
    logical, pending = [], ""
    for raw in body.splitlines():
        line = _strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip():
            logical.append(line.strip())
    commands = []
    for line in logical:
        for part in re.split(r"\s&&\s", line):
            words = shlex.split(part)
            env = {}
            while words and _SETTING.match(words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words:
                commands.append(Command(words, env, part.strip()))
    return commands


def shell_blocks(text: str) -> list[ShellBlock]:
    """Every ```bash / ```sh / ```shell block of a markdown text, in order."""
    return [
        ShellBlock(tuple((m.group("marker") or "").split()), parse_commands(m.group("body")), m.group("body"))
        for m in _SHELL.finditer(text)
    ]
