"""Checkpoint files shared by every model family.

- the Hugging Face layout: a directory with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``), read and written here; tensors shared between several names are written
  once, as ``transformers`` does.
- the original repositories' ``.pth`` files (``{"model": state_dict, "args": Namespace}``), read
  safely (``weights_only``) unless the caller trusts the file.
- ``load_state_dict_into`` copies a state dict into a model and reports every key that does not
  fit, by name.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.common.setting_hints import setting_hints

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"

@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model (all lists hold key names)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)
    unmapped_keys: list[str] = field(default_factory=list)
    fresh_keys: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.mismatched_keys or self.unmapped_keys)

    def describe(self) -> str:
        parts = []
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys", "unmapped_keys", "fresh_keys"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{name.replace('_', ' ')}: {shown}")
        return "; ".join(parts) if parts else "all keys matched"


class CheckpointMismatchError(KeyError, ValueError):
    """Weights that do not fit the model (missing, unexpected or other-shaped tensors).

    ``message`` says which keys and, when the keys show it, which config settings differ
    (``hints``); ``str()`` adds ``python_hint`` (what a Python caller may pass instead), which a
    command line without that option leaves out. A ``KeyError`` and a ``ValueError``, as the two
    kinds of disagreement were before."""

    def __init__(self, message: str, report: LoadReport, hints: list[str], python_hint: str = "") -> None:
        super().__init__(message)
        self.message, self.report, self.hints, self.python_hint = message, report, hints, python_hint

    def __str__(self) -> str:
        return self.message + (f" ({self.python_hint})" if self.python_hint else "")


class UnfitWeightsError(ValueError):
    """Checkpoint tensors of the wrong kind (integer or bool where the model has floating-point
    weights) or holding NaN/inf values; the message names every such key."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated, damaged or not of the kind its name says; the message names it."""


class UntrustedPickleError(RuntimeError):
    """A pickled checkpoint that holds Python objects besides tensors and plain data: loading it could run code.

    ``path`` is the file and ``global_name`` the first such object (e.g. ``"builtins.print"``) when known.
    """

    def __init__(self, path: str, global_name: str | None) -> None:
        self.path, self.global_name = path, global_name
        what = f" ({global_name})" if global_name else ""
        super().__init__(
            f"{path!r} holds Python objects besides tensors{what}, and loading it could run code; "
            "load it only if you trust the file: trust_pickle=True (command line: --trust-pickle)"
        )


def _short(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = " ".join(text.split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(error).__name__)


def torch_load_file(path: str | os.PathLike, what: str, trust_pickle: bool = False, safe: Sequence[Any] = ()) -> Any:
    """``torch.load`` of a file with errors that name it and say what is wrong.

    Read with ``weights_only=True`` (plus the ``safe`` classes); with ``trust_pickle=True`` a file that
    needs other Python objects is then read in full.

    Raises:
        FileNotFoundError: no file at ``path``.
        UntrustedPickleError: the file needs Python objects besides tensors and ``trust_pickle`` is False.
        CorruptCheckpointError: the file is truncated, damaged, or not a torch file (``what`` says what
            it should be, e.g. "original-repository checkpoint").
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"no {what} file", path)
    try:
        with torch.serialization.safe_globals(list(safe)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported global:?(?: GLOBAL)? ([\w.]+)", str(error), flags=re.IGNORECASE)
        if found is None:
            raise CorruptCheckpointError(f"{path!r} is not a readable {what}: corrupt or not a torch file ({_short(error)})") from error
        if not trust_pickle:
            raise UntrustedPickleError(path, found.group(1)) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CorruptCheckpointError(f"{path!r} is not a readable {what}: corrupt or truncated ({_short(error)})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CorruptCheckpointError(f"{path!r} is not a readable {what}: corrupt or truncated ({_short(error)})") from error


def read_original_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """Load an original-repository ``.pth``: returns (state dict, ``args`` or None).

    The state dict is ``checkpoint["ema"]["module"]`` when there is one (the EMA weights a solver
    such as RT-DETR's evaluates and releases), else ``checkpoint["model"]``, else the file itself
    when it is a bare state dict.
    The file is read with ``weights_only=True`` (allowing ``argparse.Namespace``); a file needing
    other Python objects loads only with ``trust_pickle=True`` (it can run code: trusted files only).
    See :func:`torch_load_file` for the errors.
    """
    path = os.fspath(path)
    checkpoint = torch_load_file(path, "original-repository checkpoint", trust_pickle=trust_pickle, safe=[argparse.Namespace])
    ema = checkpoint.get("ema") if isinstance(checkpoint, Mapping) else None
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return dict(ema["module"]), checkpoint.get("args")
    if isinstance(checkpoint, Mapping) and "model" in checkpoint:
        return dict(checkpoint["model"]), checkpoint.get("args")
    if isinstance(checkpoint, Mapping) and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint), None
    raise ValueError(f"{path} is not an original-repository checkpoint: expected a dict with a 'model' state dict")


# --------------------------------------------------------------------------- Hugging Face layout
def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of ``directory/model.safetensors`` (preferred) or ``directory/pytorch_model.bin``."""
    directory = os.fspath(directory)
    safetensors_path = os.path.join(directory, SAFETENSORS_NAME)
    pytorch_path = os.path.join(directory, PYTORCH_NAME)
    if os.path.isfile(safetensors_path):
        try:
            return load_file(safetensors_path)
        except Exception as error:  # safetensors' own error type, or an OSError
            raise CorruptCheckpointError(f"{safetensors_path!r} is not a readable safetensors file: corrupt or truncated ({_short(error)})") from error
    if os.path.isfile(pytorch_path):
        state = torch_load_file(pytorch_path, "PyTorch weights file")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CorruptCheckpointError(f"{pytorch_path!r} does not hold a state dict (a mapping of names to tensors)")
        return dict(state)
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    raise FileNotFoundError(f"{directory!r} holds neither {SAFETENSORS_NAME} nor {PYTORCH_NAME} (found: {present}); sharded checkpoints are not supported")


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every shared tensor kept once, under its shortest name
    (``tied_aliases`` are left out): "bbox_embed.0..." rather than "model.decoder.bbox_embed.0...".

    This is what ``transformers`` writes (it ties the copies again on load).
    """
    aliases = set(tied_aliases(model))
    return {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items() if name not in aliases}


def write_state_dict(model: nn.Module, directory: str | os.PathLike, safe_serialization: bool = True, rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> str:
    """Write the unique tensors of ``model`` to ``directory`` (safetensors or pytorch_model.bin);
    ``rename`` (a function on the whole dict) may change key names first."""
    os.makedirs(directory, exist_ok=True)
    tensors = unique_state_dict(model)
    if rename is not None:
        tensors = rename(tensors)
    if safe_serialization:
        path = os.path.join(directory, SAFETENSORS_NAME)
        save_file({name: tensor.cpu() for name, tensor in tensors.items()}, path, metadata={"format": "pt"})
    else:
        path = os.path.join(directory, PYTORCH_NAME)
        torch.save({name: tensor.cpu() for name, tensor in tensors.items()}, path)
    return path


# --------------------------------------------------------------------------------- loading
def check_weight_values(incoming: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """``UnfitWeightsError`` naming every key of ``incoming`` whose tensor is not floating-point where
    the model's (``own``) is, or holds NaN/inf values (``load_state_dict`` would cast the first and
    copy the second silently: a model that detects nothing)."""
    wrong_kind = [f"{key} ({tensor.dtype}, the model's is {own[key].dtype})" for key, tensor in incoming.items()
                  if key in own and own[key].is_floating_point() and not tensor.is_floating_point()]
    if wrong_kind:
        raise UnfitWeightsError(f"checkpoint tensors are not floating-point where the model's weights are: {', '.join(wrong_kind[:10])}"
                                f"{f' ... ({len(wrong_kind)} in all)' if len(wrong_kind) > 10 else ''}; the file is damaged or not this model's")
    broken = []
    for key, tensor in incoming.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            broken.append(f"{key} ({bad} of {tensor.numel()} values)")
    if broken:
        raise UnfitWeightsError(f"checkpoint weights hold NaN or inf values: {', '.join(broken[:10])}"
                                f"{f' ... ({len(broken)} in all)' if len(broken) > 10 else ''}; the file is damaged or was saved "
                                "from a training run that diverged")


def shared_groups(model: nn.Module) -> list[list[str]]:
    """Names of the state-dict entries that share one tensor, grouped (groups of 2+ only), over every
    name (``nn.Module.state_dict``, whatever a subclass's ``state_dict`` leaves out)."""
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, tensor in nn.Module.state_dict(model, keep_vars=True).items():
        if tensor.numel():
            groups.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def tied_aliases(model: nn.Module) -> list[str]:
    """State-dict names that repeat a tensor already listed under another name (each shared tensor
    is kept under its shortest name, the first among equals); these are what a save leaves out."""
    return [name for names in shared_groups(model) for name in names if name != min(names, key=len)]


def fill_shared(state: dict[str, Any], groups: list[list[str]]) -> None:
    """Give every name of a shared group the tensor ``state`` holds under one of them (in place)."""
    for names in groups:
        present = [name for name in names if name in state]
        if present:
            for name in names:
                state.setdefault(name, state[present[0]])


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_labels_from: str = "class_embed.0.weight",
    ignore_mismatched_sizes: bool = False,
    strict: bool = True,
    unmapped_keys: list[str] | None = None,
    key_alias: Callable[[str], str | None] | None = None,
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` with full reporting.

    - Entries that ``model`` shares between names (e.g. one class head used by every decoder
      layer, or the heads the decoder also holds) may appear under any one of their names.
    - A class head of another size raises ``ValueError`` naming both sizes, unless
      ``ignore_mismatched_sizes``: then every mismatched tensor keeps its fresh initialisation
      and a warning names them.
    - Missing or unexpected keys (and ``unmapped_keys`` from a conversion) raise
      ``CheckpointMismatchError`` (a ``KeyError``) naming them when ``strict``; otherwise they are
      named in a warning. Tensors of other shapes raise it too (a ``ValueError``). Either message
      names the config settings the keys point to (``num_feature_levels``, ``two_stage``,
      ``with_box_refine``; see ``setting_hints``).
    - A tensor that is not floating-point where the model's weight is (int32, bool), or that holds
      NaN/inf values, raises ``UnfitWeightsError`` naming every such key.
    - ``key_alias(key)`` may name the canonical key of a checkpoint key the model does not have
      (e.g. a head that a family registers twice); None keeps the key as it is.
    """
    report = LoadReport(unmapped_keys=list(unmapped_keys or []))
    own = model.state_dict(keep_vars=True)  # every name, also those a model lists once in state_dict()
    incoming = dict(state_dict)

    fill_shared(incoming, shared_groups(model))
    for key in list(incoming):
        canonical = key_alias(key) if key_alias is not None and key not in own else None
        if canonical is not None and (canonical in incoming or canonical in own):
            incoming.setdefault(canonical, incoming[key])
            del incoming[key]
    for key in list(incoming):
        if key.endswith("num_batches_tracked") and key not in own:
            del incoming[key]

    head = own.get(num_labels_from)
    if head is not None and num_labels_from in incoming and incoming[num_labels_from].shape[1:] != head.shape[1:]:
        raise ValueError(
            f"the checkpoint's class head takes {tuple(incoming[num_labels_from].shape[1:])} features per query but this "
            f"model's takes {tuple(head.shape[1:])} (the hidden size, d_model, differs): the checkpoint was trained as another "
            "variant; load it with its own config"
        )
    if head is not None and num_labels_from in incoming and incoming[num_labels_from].shape != head.shape:
        if not ignore_mismatched_sizes:
            raise ValueError(
                f"the checkpoint's class head has {incoming[num_labels_from].shape[0]} classes but the config asks for "
                f"{head.shape[0]} (num_labels); load with the checkpoint's num_labels, or pass ignore_mismatched_sizes=True "
                "to start a freshly initialised class head"
            )

    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in incoming.items():
        if key not in own:
            report.unexpected_keys.append(key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            if ignore_mismatched_sizes:
                report.fresh_keys.append(key)
            else:
                report.mismatched_keys.append(f"{key} (checkpoint {tuple(tensor.shape)}, model {tuple(own[key].shape)})")
        else:
            to_load[key] = tensor
    report.missing_keys = sorted(key for key in own if key not in incoming)
    hints = setting_hints(state_dict, unique_state_dict(model)) if (report.mismatched_keys or not report.clean) else []
    named = f"the config differs from the one the weights were trained with in {'; '.join(hints)}; " if hints else ""
    if report.mismatched_keys:
        raise CheckpointMismatchError(f"checkpoint tensors do not fit the model: {named}{', '.join(report.mismatched_keys)}", report, hints)
    if not report.clean:
        message = f"checkpoint and model disagree: {named}{report.describe()}"
        if strict:
            raise CheckpointMismatchError(message, report, hints, "pass strict=False to load anyway")
        warnings.warn(message, stacklevel=3)
    check_weight_values(to_load, own)
    if report.fresh_keys:
        warnings.warn(
            f"these tensors have other shapes in the checkpoint and keep their fresh initialisation (train them): {', '.join(report.fresh_keys)}",
            stacklevel=3,
        )
    model.load_state_dict(to_load, strict=False)
    return report
