"""A command's output folder under the one rule of ``models.engine.run_folder``, with one-line errors.

``claimed_output`` checks, before anything is created, that the folder is apart from the command's
inputs and holds nothing the command may not write over; then creates it and proves it writable
(``check_output_dir``); then holds its lock for the block, so a second command writing there is
refused naming this one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from models.cli.errors import CliError, check_output_dir
from models.cli.loading import DEMO_CHECKPOINT_DIR, DEMO_CHECKPOINT_NAME
from models.engine.run_folder import (
    OutputConflict,
    check_apart_from_inputs,
    check_output_folder,
    check_outputs_are_not_inputs,
    dataset_tree,
    folder_lock,
)


def checkpoint_folders(checkpoint: str | None) -> list[tuple[str, Path]]:
    """The folders a ``--checkpoint`` reads (``read_folders`` of ``check_apart_from_inputs``): the
    folder itself (or the folder of a checkpoint file) and its ``model/``; none for a Hub repo id."""
    if not checkpoint:
        return []
    path = DEMO_CHECKPOINT_DIR if checkpoint == DEMO_CHECKPOINT_NAME else Path(checkpoint)
    if not path.exists():
        return []
    folder = path if path.is_dir() else path.parent
    what = f"the folder of --checkpoint {checkpoint!r}"
    return [(what, folder), (what, folder / "model")]


def image_folders(images: Sequence[str]) -> list[tuple[str, Path]]:
    """The folders holding the input images, each once (``read_folders`` of ``check_apart_from_inputs``)."""
    seen: dict[str, tuple[str, Path]] = {}
    for image in images:
        folder = Path(image).parent
        seen.setdefault(os.path.realpath(folder), (f"the folder of the input image {image!r}", folder))
    return list(seen.values())


@contextlib.contextmanager
def claimed_output(out: str, command: str, *, images: Sequence[str] = (), checkpoint: str | None = None,
                   data: str | None = None, allowed: str | None = None,
                   read_files: Sequence[tuple[str, str]] = (), writes: Sequence[str] = ()) -> Iterator[Path]:
    """Hold ``out`` for ``command`` for the block (see the module docstring); ``CliError`` naming both
    sides when an input, another command's results or another writer is in the way.

    Args:
        out: the ``--out`` folder.
        command: the command's name (``detect``, ``eval``, ...).
        images: input image files (their folders are never ``out``).
        checkpoint: the ``--checkpoint`` (its folder and ``model/`` are never ``out``).
        data: the ``--data`` dataset (``out`` never lies inside it).
        allowed: what ``out`` may hold and the command writes over (``"dataset"``: ``make-data --overwrite``).
        read_files: other input files, ``(what, file)``, none of which may be among ``writes``.
        writes: the names of the files the command writes into ``out``.
    """
    read_folders = [*image_folders(images), *checkpoint_folders(checkpoint)]
    read_trees = [dataset_tree(data)] if data else []
    try:
        check_apart_from_inputs(out, read_folders=read_folders, read_trees=read_trees)
        check_outputs_are_not_inputs(out, writes, read_files)
        check_output_folder(out, command, allowed=allowed)
    except OutputConflict as err:
        raise CliError(str(err)) from None
    folder = check_output_dir(out)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder))
            check_output_folder(folder, command, allowed=allowed)  # again: no other writer can start now
        except OutputConflict as err:
            raise CliError(str(err)) from None
        yield folder
