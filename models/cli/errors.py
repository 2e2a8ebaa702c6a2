"""User errors of the command line, the one error-exit path, and reading the JSON files users name on it.

:func:`run_command` is the only place where a command's failure becomes an exit status:

- a user error (:class:`CliError`, an unreadable or unsuitable image, an output that cannot be
  written: read-only, a file where a folder is wanted, a full disk) prints one line and exits 2;
- a run stopped on purpose (:class:`RunStopped`, e.g. a non-finite training loss) prints one line
  and exits 1;
- Ctrl-C (SIGINT) prints one line (``interrupted``, plus where the last checkpoint is when a command
  says so through :class:`Interrupted`) and exits 130;
- anything else is a bug and keeps its traceback.

Warnings the library emits while a command runs are printed as one ``warning:`` line each.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.data.image_files import ImageError

EXIT_USER_ERROR = 2
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130

# errors of writing/reading files that the user can fix (permissions, space, a path of the wrong kind)
_USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOENT: "no such file or folder",
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class RunStopped(Exception):
    """A run that stopped on purpose (e.g. a non-finite loss): printed as one line, exit status 1."""


class Interrupted(Exception):
    """Ctrl-C, with a message saying what was kept (e.g. ``interrupted, checkpoint at OUT/training_state.pt``)."""


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the file(s) it names and the reason."""
    reason = _USER_OS_ERRORS.get(err.errno or -1) or err.strerror or str(err)
    names = [repr(str(n)) for n in (err.filename, err.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else f"{reason} ({err})"


def is_user_os_error(err: BaseException) -> bool:
    """Whether ``err`` is an ``OSError`` the user can fix (see ``_USER_OS_ERRORS``)."""
    return isinstance(err, OSError) and err.errno in _USER_OS_ERRORS


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def run_command(name: str, command: Callable[[Any], int], ns: Any) -> int:
    """Run ``command(ns)`` for the command ``name``; every failure becomes one line and an exit status.

    See the module docstring for the statuses. Library warnings are shown as one line each.
    """
    prefix = f"deformable-detr {name}"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        print(f"{prefix}: warning: {_one_line(message)}", file=sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        return command(ns)
    except (CliError, ImageError) as err:
        print(f"{prefix}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunStopped as err:
        print(f"{prefix}: stopped: {_one_line(err)}", file=sys.stderr)
        return EXIT_STOPPED
    except Interrupted as err:
        print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if not is_user_os_error(err):
            raise
        print(f"{prefix}: error: {_one_line(describe_os_error(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = previous


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (if needed) and prove it writable, before any long work.

    Raises ``CliError`` naming ``flag`` and the path when it is a file, lies under a file, or cannot
    be written (read-only, no permission, full disk).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{flag} {str(path)!r} is a file, not a folder")
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise CliError(f"{flag} {str(path)!r} cannot be written: {describe_os_error(err)}") from err
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder


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
    except OSError as err:
        raise CliError(f"{flag} {path!r} cannot be read: {describe_os_error(err)}") from err
    if not isinstance(data, expected):
        raise CliError(f"{flag} {path!r} must hold {what}")
    return data
