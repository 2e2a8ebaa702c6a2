"""The device names a command or a training run accepts, checked without importing torch (so that
``--device tpu`` is one line before any model work)."""

from __future__ import annotations

import re

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: str, flag: str = "--device") -> str:
    """``name`` when it names a device this library runs on (:data:`DEVICE_NAMES`); ``ValueError``
    naming ``flag`` and the valid values otherwise (whether that device is present is checked later)."""
    if isinstance(name, str) and (name in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", name)):
        return name
    raise ValueError(f"{flag} must be one of {DEVICE_NAMES}, got {name!r}")
