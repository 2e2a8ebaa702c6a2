"""Cache entries of the compiled library that are verified before anyone loads them.

A build folder holds ``<name>.so`` and, written last, a completion marker recording the library's
size and sha256. A library is loaded only when both match: a truncated file (which ``dlopen``
maps and then dies on with SIGBUS), random bytes, a library deleted under its marker, or a marker
from an older msda all count as "needs a rebuild", never as "use the reference forever".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

MARKER = "complete"
LOCK = "build.lock"
NO_BUILD = "no build yet"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One build: its folder and the library inside it."""

    folder: Path
    name: str

    @property
    def library(self) -> Path:
        return self.folder / f"{self.name}.so"

    @property
    def marker(self) -> Path:
        return self.folder / MARKER


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problem(entry: Entry) -> str | None:
    """``None`` when the entry is a verified, complete build; otherwise why it cannot be loaded."""
    if not entry.marker.exists():
        return NO_BUILD if not entry.library.exists() else "the library has no completion marker (an interrupted build)"
    try:
        text = entry.marker.read_text()
        record = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return "its completion marker is unreadable"
    if not isinstance(record, dict) or not isinstance(record.get("size"), int) or not isinstance(record.get("sha256"), str):
        return "its completion marker records no size and checksum (written by an older msda)"
    try:
        size = entry.library.stat().st_size
    except FileNotFoundError:
        return "the completion marker is there but the library is missing"
    if size != record["size"]:
        return f"the library has {size} bytes where the build recorded {record['size']} (truncated or replaced)"
    if sha256_of(entry.library) != record["sha256"]:
        return "the library's sha256 differs from the one recorded at build time (damaged)"
    return None


def record_complete(entry: Entry) -> None:
    """Write the marker (size + sha256 of the library), atomically, after a successful build."""
    record = {"library": entry.library.name, "size": entry.library.stat().st_size, "sha256": sha256_of(entry.library)}
    partial = entry.folder / f".{MARKER}.{os.getpid()}"
    partial.write_text(json.dumps(record))
    os.replace(partial, entry.marker)


def clear(entry: Entry) -> None:
    """Remove a broken build (everything but the lock), so the next build starts from nothing.

    Files are unlinked, never rewritten in place: a process that has the old library mapped keeps
    its copy intact.
    """
    for child in entry.folder.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
