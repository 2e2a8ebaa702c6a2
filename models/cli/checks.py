"""Numbers on the command line that argparse cannot check, refused before torch is imported.

Each command's bounds are listed in one table; a value outside them is a ``CliError`` naming the
flag (one line, exit status 2) within a fraction of a second. The library functions the commands
call check the same values again for callers from Python.
"""

from __future__ import annotations

import argparse

from models.cli.errors import CliError
from models.engine.devices import check_device_name

# command -> {argparse dest: smallest allowed value}
MINIMUMS: dict[str, dict[str, int]] = {
    "detect": {"top_k": 1, "batch_size": 1},
    "eval": {"batch_size": 1},
    "demo": {"num_images": 0, "test_images": 1, "threads": 1},
    "train": {"threads": 1},
    "make-data": {"train": 0, "val": 0, "test": 0, "max_objects": 0, "image_size": 1},
}
# commands whose --threshold is a score in [0, 1]
SCORE_THRESHOLDS = ("detect", "demo")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_nms(value: float | None) -> float | None:
    """``--nms``: None or 0 (off) gives None; an IoU in (0, 1] is returned; anything else is a ``CliError``."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise CliError(f"--nms must be an IoU in (0, 1] (or 0 for off), got {value!r}")
    return float(value)


def check_options(ns: argparse.Namespace) -> None:
    """Raise ``CliError`` naming the first flag of ``ns.command`` whose value is out of bounds."""
    command = getattr(ns, "command", None)
    if command is None:
        raise CliError("no COMMAND given")
    for dest, minimum in MINIMUMS.get(command, {}).items():
        value = getattr(ns, dest, None)
        if value is not None and value < minimum:
            raise CliError(f"{_flag(dest)} must be >= {minimum}, got {value}")
    if command in SCORE_THRESHOLDS and not 0.0 <= ns.threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {ns.threshold}")
    if hasattr(ns, "nms"):
        check_nms(ns.nms)
    if getattr(ns, "device", None) is not None:
        try:
            check_device_name(ns.device, "--device")
        except ValueError as err:
            raise CliError(str(err)) from None
