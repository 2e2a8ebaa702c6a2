"""One rule for every folder a command writes (``train``'s run folder, the ``--out`` of ``eval``,
``detect``, ``demo``, ``make-data``).

1. **Outputs never overwrite inputs.** An output folder is never a folder the command reads (the
   folder of an input image, a checkpoint folder) and never lies inside a dataset
   (:func:`check_apart_from_inputs`).
2. **Nothing is written over another command's results.** A folder holding a training run, a
   checkpoint or a dataset is written only by the command that owns it: ``train`` continues a run
   with ``--resume`` or replaces it with ``--overwrite``, ``make-data`` replaces a dataset only with
   ``--overwrite``; what is replaced is moved aside into ``replaced-<time>/``, never deleted
   (:func:`check_output_folder`, :func:`check_run_folder`, :func:`move_aside`).
3. **One writer at a time.** A command holds ``<folder>/.deformable-detr.lock`` while it writes
   (:func:`folder_lock`): an ``flock`` that the operating system releases when the process ends,
   however it ends, and a JSON record of the holder (host, pid, start time, command) that the
   refusal of a second writer names. A record left by a process that is gone is taken over with a
   warning naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the record alone (pid liveness) decides
    fcntl = None

LOCK_NAME = ".deformable-detr.lock"
STATE_FILE = "training_state.pt"
TRAIN_ARGS_FILE = "train_args.json"
METRICS_LINES = "metrics.jsonl"
RUN_MARKERS = (STATE_FILE, TRAIN_ARGS_FILE, METRICS_LINES)
"""Files that make a folder a training run (``train`` writes the first of them before any epoch ends)."""
RUN_FILES = (STATE_FILE, "model", METRICS_LINES, "metrics.json", TRAIN_ARGS_FILE)
"""What ``train`` writes into its run folder (what ``--overwrite`` moves aside)."""
DATASET_FILES = ("images", "annotations")
"""What ``make-data`` writes (what its ``--overwrite`` moves aside)."""


class OutputConflict(ValueError):
    """An output folder that would overwrite an input, another run or a dataset; the message names both."""


class FolderInUse(OutputConflict):
    """Another process is writing the folder; the message names it (host, pid, start time, command)."""


# ---------------------------------------------------------------------------------- what a folder is
class Contents(NamedTuple):
    """What a folder holds that only its own command may write: ``kind`` is ``"run"``,
    ``"checkpoint"`` or ``"dataset"``; ``description`` says it in words for messages."""

    kind: str
    description: str


def folder_contents(folder: str | os.PathLike) -> Contents | None:
    """The :class:`Contents` of ``folder``: a training run (:data:`RUN_MARKERS`), a checkpoint
    (``config.json``), a dataset (``annotations/*.json``), or None (also when it is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if any((folder / name).exists() for name in RUN_MARKERS):
        return Contents("run", describe_run_folder(folder))
    if (folder / "config.json").is_file():
        return Contents("checkpoint", "a checkpoint (config.json)")
    if (folder / "annotations").is_dir() and any((folder / "annotations").glob("*.json")):
        return Contents("dataset", "a dataset (annotations/*.json)")
    return None


def describe_run_folder(folder: str | os.PathLike) -> str:
    """``"a training run (finished: 2 of 2 epochs)"``, ``"... (3 of 10 epochs done)"`` or
    ``"... (no epoch finished)"``, read from ``train_args.json`` and ``metrics.jsonl`` (no tensor is loaded)."""
    folder = Path(folder)
    done = 0
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for text in (folder / METRICS_LINES).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError):
                done = max(done, int(json.loads(text)["epoch"]))
    planned = None
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        planned = int(json.loads((folder / TRAIN_ARGS_FILE).read_text(encoding="utf-8"))["train_args"]["epochs"])
    if done == 0:
        return "a training run (no epoch finished)"
    if planned is not None and done >= planned:
        return f"a training run (finished: {done} of {planned} epochs)"
    return f"a training run ({done} of {planned if planned is not None else '?'} epochs done)"


def dataset_tree(data: str | os.PathLike) -> tuple[str, str | os.PathLike]:
    """The ``read_trees`` entry of a dataset folder ``--data`` (for :func:`check_apart_from_inputs`)."""
    return (f"the dataset --data {str(data)!r}", data)


def _same_or_inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


# ------------------------------------------------------------------------------------------ rules
def check_apart_from_inputs(
    out: str | os.PathLike,
    *,
    read_folders: Sequence[tuple[str, str | os.PathLike]] = (),
    read_trees: Sequence[tuple[str, str | os.PathLike]] = (),
    flag: str = "--out",
) -> None:
    """``OutputConflict`` when the output folder ``out`` is one of ``read_folders`` or lies in one of
    ``read_trees``.

    Args:
        out: the output folder.
        read_folders: ``(what, folder)`` pairs the command reads files from (the folder of an input
            image, a checkpoint folder): ``out`` may lie inside them (``photos/annotated``) but not be one.
        read_trees: ``(what, folder)`` pairs never written into, also below (a dataset, ``--data``).
        flag: the option that named ``out``, for the message.
    """
    if not isinstance(flag, str):
        raise TypeError(f"flag must be a str, got {type(flag).__name__}")
    target = Path(out)
    for what, folder in read_folders:
        if Path(os.path.realpath(target)) == Path(os.path.realpath(folder)):
            raise OutputConflict(
                f"{flag} {str(out)!r} is {what}: the outputs would replace or mix with the inputs; choose another {flag}"
            )
    for what, folder in read_trees:
        if _same_or_inside(target, Path(folder)):
            raise OutputConflict(
                f"{flag} {str(out)!r} lies in {what}, which is only read, never written; choose an {flag} outside it"
            )


def check_outputs_are_not_inputs(out: str | os.PathLike, writes: Sequence[str], read_files: Sequence[tuple[str, str | os.PathLike]],
                                 flag: str = "--out") -> None:
    """``OutputConflict`` when a file the command writes into ``out`` (``writes``: names) is one of
    ``read_files`` (``(what, file)`` pairs), e.g. ``eval --predictions OUT/metrics.json --out OUT``."""
    if isinstance(writes, str):
        raise TypeError("writes must be a sequence of file names, not one string")
    for name in writes:
        target = Path(os.path.realpath(Path(out) / name))
        for what, file in read_files:
            if target == Path(os.path.realpath(file)):
                raise OutputConflict(f"{flag} {str(out)!r} would replace {what} {str(file)!r} with its {name}; choose another {flag}")


def check_output_folder(out: str | os.PathLike, command: str, *, allowed: str | None = None, flag: str = "--out") -> None:
    """``OutputConflict`` when ``out`` holds a training run, a checkpoint or a dataset, which
    ``command`` would write over (``allowed``: the :class:`Contents` kind this call may write over,
    e.g. ``"dataset"`` for ``make-data --overwrite``)."""
    if not isinstance(command, str) or not command:
        raise TypeError(f"command must be a command name, got {command!r}")
    held = folder_contents(out)
    if held is None or held.kind == allowed:
        return
    raise OutputConflict(
        f"{flag} {str(out)!r} holds {held.description}; {command} does not write over it: choose another {flag}"
    )


def check_run_folder(out: str | os.PathLike, resume: str | os.PathLike | None, overwrite: bool) -> None:
    """``train``'s rule for its run folder ``out``: it must be new, empty of runs, the run that
    ``resume`` continues, or replaced on purpose (``overwrite``).

    Raises ``OutputConflict`` naming ``out``, what it holds and the two flags otherwise, and when
    ``overwrite`` would replace the very run that ``resume`` continues.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
    out = Path(out)
    held = folder_contents(out)
    resumes_here = resume is not None and _resumed_folder(resume) == Path(os.path.realpath(out))
    if resumes_here and overwrite:
        raise OutputConflict(f"--overwrite with --resume {str(resume)!r}: that is the run in --out {str(out)!r}, which --overwrite would move aside; drop --overwrite")
    if held is None or resumes_here or (overwrite and held.kind == "run"):
        return
    if held.kind == "run":
        raise OutputConflict(
            f"--out {str(out)!r} holds {held.description}; continue it with --resume {str(out)!r}, replace it with "
            "--overwrite (its files are moved into a replaced-<time> folder inside it), or choose another --out"
        )
    raise OutputConflict(f"--out {str(out)!r} holds {held.description}, not a training run; choose another --out")


def _resumed_folder(resume: str | os.PathLike) -> Path:
    path = Path(os.path.realpath(resume))
    return path.parent if path.name == STATE_FILE or path.is_file() else path


def move_run_aside(out: str | os.PathLike) -> Path | None:
    """Move the files ``train`` wrote into ``out`` (:data:`RUN_FILES`) into a new ``out/replaced-<UTC time>/``;
    returns that folder, or None when there was nothing to move. Nothing is deleted."""
    return move_aside(out, RUN_FILES)


def move_aside(out: str | os.PathLike, names: Sequence[str]) -> Path | None:
    """Move the entries ``names`` of ``out`` that exist into a new ``out/replaced-<UTC time>/``;
    returns that folder, or None when none exists. Nothing is deleted."""
    if isinstance(names, str):
        raise TypeError("names must be a sequence of file names, not one string")
    out = Path(out)
    present = [out / name for name in names if (out / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = out / f"replaced-{stamp}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = out / f"replaced-{stamp}-{suffix}"
    aside.mkdir()
    for path in present:
        os.replace(path, aside / path.name)
    return aside


# ------------------------------------------------------------------------------------------- lock
def _holder_record(command: str | None) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _read_record(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"command": raw[:200].decode("utf-8", "replace")}
    return record if isinstance(record, dict) else {"command": str(record)[:200]}


def describe_holder(record: dict | None) -> str:
    """``pid 123 on host h, started 2026-01-01T10:00:00Z, running 'deformable-detr train ...'``."""
    if not record:
        return "a process that has not yet written its name"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}, "
            f"running {record.get('command', '?')!r}")


def _alive_here(record: dict | None) -> bool:
    """Whether ``record`` names a process of this host that still runs (used where ``flock`` is unavailable)."""
    if not record or record.get("host") != socket.gethostname():
        return bool(record)  # another host's process cannot be checked: assume it runs
    try:
        os.kill(int(record["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _lock(fd: int) -> bool:
    """Take the ``flock`` of ``fd`` without waiting; False when another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:  # a file system without flock: the record decides
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return True
        raise
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder/.deformable-detr.lock`` for the block (the folder must exist); yields the lock file.

    Raises ``FolderInUse`` naming the holder when another process holds it. A record left by a
    process that ended without releasing it (killed) is taken over with a warning naming that
    process. The lock file is deleted when the block ends, by return, error or Ctrl-C.

    Args:
        folder: the folder about to be written.
        command: how to name this process in the record (default: its command line).
        flag: the option that named ``folder``, for messages.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the folder to lock does not exist", str(folder))
    path = folder / LOCK_NAME
    fd = _acquire(path, command, flag)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()
        os.close(fd)


def _acquire(path: Path, command: str | None, flag: str) -> int:
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = _lock(fd)
            previous = _read_record(fd)
            if not taken or (fcntl is None and previous and previous.get("pid") != os.getpid() and _alive_here(previous)):
                raise FolderInUse(
                    f"{flag} {str(path.parent)!r} is being written by another command: {describe_holder(previous)}; "
                    f"wait for it to end or choose another {flag} (lock file {str(path)!r})"
                )
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder released (deleted) it between our open and our flock: start again
                os.close(fd)
                continue
            if previous:
                warnings.warn(
                    f"{flag} {str(path.parent)!r}: taking over the lock left by {describe_holder(previous)}, which "
                    "ended without releasing it (killed?); its writes may be incomplete", UserWarning, stacklevel=4,
                )
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(_holder_record(command)) + "\n").encode("utf-8"))
            os.fsync(fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise FolderInUse(f"{flag} {str(path.parent)!r}: its lock file {str(path)!r} keeps changing; another command is starting there")

