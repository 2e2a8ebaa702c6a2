"""What a training run keeps in its folder, and how it is written and repaired.

- ``training_state.pt``: everything needed to resume exactly (weights, optimizer, scheduler,
  scaler, epoch, step, random states, this epoch's records), tensors and plain data only, read with
  ``weights_only=True`` (:func:`load_training_state`), written to a temporary file and renamed
  (:func:`atomic_torch_save`).
- ``model/``: what ``detect``/``eval`` load, replaced only by renames (:func:`export_model`); a swap
  that a crash interrupted is finished or rolled back by :func:`recover_run_dir`.
- ``metrics.jsonl`` / ``metrics.json``: made to agree with the state being resumed
  (:func:`reconcile_metrics`).

Write errors name the file they were writing (:func:`naming_write_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from models.common.checkpoint_files import CorruptCheckpointError, UntrustedPickleError, torch_load_file
from models.engine.evaluation import write_metrics
from models.engine.run_folder import METRICS_LINES, STATE_FILE

MODEL_DIR = "model"
STATE_FORMAT = "deformable-detr-training-state/2"
"""Version 2 holds only tensors and plain data (read with ``weights_only=True``); version 1 files held
numpy arrays, which only a full (code-running) unpickling reads, and are refused."""

@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike):
    """Re-raise a failed write inside the block as an ``OSError`` that names ``path`` and keeps its errno.

    Python's own write errors (a full disk) carry no file name, and safetensors reports them as its
    own error type with the errno only in the text.
    """
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    except Exception as err:  # safetensors: "I/O error: No space left on device (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``.

    The object is serialised in memory first, so a full disk shows up as an ``OSError`` (ENOSPC) naming
    ``path`` and never as a half-written archive; the old ``path`` is untouched until the rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with naming_write_errors(path):
            with open(tmp, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()



def _swap_names(directory: Path) -> tuple[Path, Path, Path]:
    """The staging folders of ``directory``: being written, complete and ready, the replaced one."""
    return (directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.new"),
            directory.with_name(f".{directory.name}.old"))


def export_model(model: torch.nn.Module, processor, directory: Path) -> None:
    """``save_pretrained`` of the model and the processor into ``directory``, replacing it only once complete.

    Steps (each a rename, so a crash at any point leaves something :func:`recover_model_dir` can
    finish or roll back): write ``.NAME.tmp``; rename it to ``.NAME.new`` (complete); rename
    ``NAME`` to ``.NAME.old``; rename ``.NAME.new`` to ``NAME``; delete ``.NAME.old``.
    """
    directory = Path(directory)
    tmp, new, old = _swap_names(directory)
    for stale in (tmp, new):
        if stale.exists():
            shutil.rmtree(stale)
    with naming_write_errors(tmp):
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    os.replace(tmp, new)
    _finish_swap(directory)


def _finish_swap(directory: Path) -> None:
    tmp, new, old = _swap_names(directory)
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(new, directory)
    if old.exists():
        shutil.rmtree(old)


def recover_model_dir(directory: str | os.PathLike) -> str | None:
    """Finish or roll back a model-folder swap that a crash interrupted; delete its stale staging folders.

    A complete ``.NAME.new`` is moved into place (the training state was saved before it, so it is the
    newer model); otherwise a lone ``.NAME.old`` is moved back. Returns what was done, or None.
    """
    directory = Path(directory)
    tmp, new, old = _swap_names(directory)
    done = None
    if new.is_dir():
        _finish_swap(directory)
        done = f"finished an interrupted replacement of {str(directory)!r}"
    elif not directory.exists() and old.is_dir():
        os.replace(old, directory)
        done = f"rolled back an interrupted replacement of {str(directory)!r}"
    stale = [tmp, old, *directory.parent.glob(f".{directory.name}.tmp*"), *directory.parent.glob(f".{directory.name}.old*")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
    return done


def recover_run_dir(out: str | os.PathLike) -> list[str]:
    """Make a run folder consistent before training writes to it again (rank 0, at the start of ``train``).

    Finishes or rolls back an interrupted ``model/`` swap, and deletes the temporary files of writes
    that were killed (``.training_state.pt.tmp*``, ``metrics.json.tmp``). Returns what was done.
    """
    out = Path(out)
    notes = []
    done = recover_model_dir(out / MODEL_DIR)
    if done:
        notes.append(done)
    for stale in (*out.glob(f".{STATE_FILE}.tmp*"), out / "metrics.json.tmp", *out.glob(".write-test-*")):
        if stale.is_file():
            stale.unlink()
            notes.append(f"deleted {str(stale)!r}, left by an interrupted write")
    return notes


def reconcile_metrics(out: str | os.PathLike, state: dict) -> None:
    """Make ``metrics.jsonl`` and ``metrics.json`` agree with the training state being resumed.

    Lines of epochs after the state's (a crash after they were written but before the state was),
    and a half-written last line, are dropped; the state's own epoch line is added when a crash lost
    it; ``metrics.json`` is rewritten from the state when it belongs to another epoch.
    """
    out = Path(out)
    epoch = int(state["epoch"])
    lines_file = out / METRICS_LINES
    kept: list[str] = []
    if lines_file.is_file():
        for text in lines_file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= epoch:
                kept.append(json.dumps(record))
    line = state.get("metrics_line")
    if line is not None and not any(json.loads(text)["epoch"] == epoch for text in kept):
        kept.append(json.dumps(line))
    with naming_write_errors(lines_file):
        tmp = lines_file.with_name(f".{lines_file.name}.tmp")
        tmp.write_text("".join(text + "\n" for text in kept), encoding="utf-8")
        os.replace(tmp, lines_file)
    evaluation = state.get("evaluation")
    if evaluation is not None:
        current = None
        if (out / "metrics.json").is_file():
            try:
                current = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                current = None
        if not isinstance(current, dict) or current.get("epoch") != evaluation.get("epoch"):
            write_metrics(out / "metrics.json", {k: v for k, v in evaluation.items()})


def rng_state() -> dict:
    """Every random state, as tensors and plain data only (readable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    version, internal, gauss_next = random.getstate()
    state = {"python": [int(version), list(internal), gauss_next], "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a ``training_state.pt`` (``path`` may also be the run's output folder).

    The file is read with ``weights_only=True``: it may hold tensors and plain data only, so a crafted
    file cannot run code. A file that holds other Python objects is refused, as is a corrupt one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {str(path)!r} (expected the {STATE_FILE} a training run writes)")
    try:
        state = torch_load_file(path, "training state")
    except UntrustedPickleError as err:
        what = f" ({err.global_name})" if err.global_name else ""
        raise ValueError(
            f"training state {str(path)!r} holds Python objects{what} besides tensors and plain data; it is refused because "
            f"loading it could run code (states written by this library, format {STATE_FORMAT!r}, never do)"
        ) from err
    except CorruptCheckpointError as err:
        raise ValueError(f"training state {err}") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(
            f"{str(path)!r} is not a training state this version reads (format {found!r}, expected {STATE_FORMAT!r})"
        )
    state["path"] = str(path)
    return state



def prepare_out_dir(out: Path) -> None:
    """Create the output folder and prove it writable before any long work (``OSError`` naming it if not)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the output folder is a file", str(out))
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    with naming_write_errors(probe):
        probe.write_bytes(b"ok")
    probe.unlink()
