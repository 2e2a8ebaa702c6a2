"""``transformers.Trainer`` support: checkpoint folders that both libraries load as they are.

``Trainer`` writes only the weights of a model that is not a ``transformers.PreTrainedModel``
(``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ...). ``CheckpointConfigCallback``
adds ``config.json`` to every checkpoint folder it saves, and checks that the files it wrote read
back, naming the one that does not; ``check_trainer_checkpoint(folder)`` runs the same check
before ``trainer.train(resume_from_checkpoint=folder)``, whose own error on a truncated file names
no file. Needs ``transformers`` (``pip install .[hf]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import TrainerCallback

from models.common.checkpoint_files import CorruptCheckpointError

# the files Trainer writes into a checkpoint folder that torch.load reads (weights only)
_TORCH_FILES = ("optimizer.pt", "scheduler.pt", "pytorch_model.bin")


def check_trainer_checkpoint(folder: str | os.PathLike) -> Path:
    """Read every weight, optimizer and scheduler file of a ``Trainer`` checkpoint folder;
    ``CorruptCheckpointError`` naming the first file that is truncated or unreadable,
    ``FileNotFoundError`` naming ``folder`` when it holds no weights. Returns the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} is not a Trainer checkpoint folder (no such folder)")
    weights = folder / "model.safetensors"
    if not weights.is_file() and not (folder / "pytorch_model.bin").is_file():
        raise FileNotFoundError(f"folder {str(folder)!r} holds no model.safetensors or pytorch_model.bin")
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except Exception as error:  # safetensors raises its own error types
            raise CorruptCheckpointError(f"{weights}: cannot be read ({error}); the save was cut short — resume from an earlier checkpoint") from error
    for name in _TORCH_FILES:
        path = folder / name
        if path.is_file():
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # truncated zip archives raise RuntimeError, pickles UnpicklingError
                raise CorruptCheckpointError(f"{path}: cannot be read ({type(error).__name__}: {error}); the save was cut short — resume from an earlier checkpoint") from error
    return folder


class CheckpointConfigCallback(TrainerCallback):
    """Writes ``config.json`` into every checkpoint folder ``Trainer`` saves (the model's
    ``save_config``), then checks the folder's files (``check_trainer_checkpoint``)::

        trainer = transformers.Trainer(model=model, args=args, ..., callbacks=[CheckpointConfigCallback()])
    """

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        if not hasattr(model, "save_config"):
            raise TypeError(f"CheckpointConfigCallback needs a model of this library (with save_config), got {type(model).__name__}")
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        model.save_config(folder)
        check_trainer_checkpoint(folder)
        return control
