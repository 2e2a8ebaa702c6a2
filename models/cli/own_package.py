"""Refuse to run when the name ``models`` is not this package.

The package is called ``models``, a name a user's own ``models.py`` (or ``models/`` folder) can take
first on ``sys.path``: ``python -m models`` in such a folder runs the user's file, and an import of
ours can pick up theirs. The entry points call :func:`check_own_package` before anything else, so a
mix-up stops with one line instead of running the wrong code.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""This package's folder (``.../models``)."""


def own_package_problem(module: object) -> str | None:
    """Why ``module`` (what ``import models`` gave) is not this package, or None when it is."""
    location = getattr(module, "__file__", None)
    if module is None or location is None:
        return f"'models' resolves to {module!r}, which is not this package"
    if Path(location).resolve().parent != PACKAGE_DIR:
        return f"'models' resolves to {location}, not to this package ({PACKAGE_DIR})"
    return None


def check_own_package(prog: str = "deformable-detr") -> None:
    """Exit with status 2 and one line naming both locations when ``models`` is another package."""
    if not isinstance(prog, str):
        raise TypeError(f"prog must be a str, got {type(prog).__name__}")
    problem = own_package_problem(sys.modules.get("models"))
    if problem is not None:
        print(f"{prog}: error: {problem}; rename your own 'models' module, or run from another folder "
              "(see 'If you have your own models package' in the README)", file=sys.stderr)
        raise SystemExit(2)
