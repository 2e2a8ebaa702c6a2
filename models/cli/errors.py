"""User errors of the command line, and reading the JSON files users name on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def read_json_file(path: str, flag: str, expected: type, what: str) -> Any:
    """The JSON value in ``path``, which must be a ``expected`` (``dict`` or ``list``).

    Raises ``CliError`` naming ``flag`` and the file when it is missing, not JSON, or another type;
    ``what`` says what the file should hold (e.g. "a JSON object of DeformableDetrConfig fields").
    """
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{flag} {path!r}: file not found")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CliError(f"{flag} {path!r} is not valid JSON: {err}") from err
    if not isinstance(data, expected):
        raise CliError(f"{flag} {path!r} must hold {what}")
    return data
