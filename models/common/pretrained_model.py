"""``from_pretrained`` / ``save_pretrained`` written once for every family's detector and bare model.

A family describes its files with a ``CheckpointFormat`` (config class, how its original ``.pth``
is read, how file keys map to ours) and sets it as the class attribute ``checkpoint_format``; the
class mixes in ``PretrainedMixin``. Detector keys are the reference layout: a bare model's keys are
the detector's ``model.*`` keys without that prefix.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from models.common import checkpoint_files
from models.common.hub import PushToHubMixin
from models.common.pretrained import OriginalFormat, auto_dtype, place, read_checkpoint, resolve_device, split_loading_kwargs

StateDict = dict[str, torch.Tensor]
_HEAD_PREFIXES = ("class_embed.", "bbox_embed.")


def _same(state_dict: StateDict, config: Any) -> StateDict:
    return state_dict


class CheckpointFormat(NamedTuple):
    """How a family's checkpoints are read and written.

    config_class: the family's config (``from_json_file``, ``field_names``, ``copy``).
    original: how its original repository's ``.pth`` is read (key renaming, config from ``args``);
        None when the family reads only checkpoint directories and Hub ids.
    from_file: file keys (detector layout) → ours, given the config (e.g. another backbone naming).
    to_file: ours → file keys (the inverse, for ``save_pretrained``).
    key_alias: a key → the key it duplicates (or None), for files that store heads twice.
    convert_config: a config object given by the caller → the family's config (e.g. a
        ``transformers`` config); default: must already be a ``config_class``.
    """

    config_class: type
    original: OriginalFormat | None = None
    from_file: Callable[[StateDict, Any], StateDict] = _same
    to_file: Callable[[StateDict, Any], StateDict] = _same
    key_alias: Callable[[str], str | None] | None = None
    convert_config: Callable[[Any], Any] | None = None


def detection_layout(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A checkpoint of either class with the detector's key names (a bare model's keys gain ``model.``)."""
    if any(key.startswith("model.") for key in state_dict):
        return dict(state_dict)
    return {f"model.{key}": value for key, value in state_dict.items()}


def bare_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Detector keys → bare model keys: (state dict without ``model.``, the head keys dropped)."""
    dropped = sorted(key for key in state_dict if not key.startswith("model."))
    return {key[len("model."):]: value for key, value in state_dict.items() if key.startswith("model.")}, dropped


class PretrainedMixin(PushToHubMixin):
    """``from_pretrained`` and ``save_pretrained`` for a class with ``checkpoint_format`` and a
    constructor ``cls(config, *, backbone_body=None)``. ``is_bare``: the class is a bare model
    (keys without ``model.``, no heads)."""

    checkpoint_format: CheckpointFormat
    is_bare: bool = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: Any = None,
        *,
        backbone_body: nn.Module | None = None,
        strict: bool = True,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load from a local checkpoint or a Hugging Face Hub repo id.

        Args:
            path: a directory in the Hugging Face layout (``config.json`` + ``model.safetensors``
                or ``pytorch_model.bin``), a Hub repo id (resolved with ``huggingface_hub`` and its
                cache), or a ``.pth`` file written by the family's original training script
                (``{"model": state_dict, "args": Namespace}``). A bare model loads a detector's
                checkpoint (its heads are dropped with a warning naming them), and the reverse.
            config: the config to build (for Deformable DETR also a ``transformers`` config);
                default: the checkpoint's ``config.json``, or for a ``.pth`` the architecture in
                its ``args`` and the class count of its class head.
            backbone_body: another backbone network to build the model with (must return a list
                of maps and carry ``channels``; e.g. a narrower ResNet).
            strict: raise on missing or unexpected keys (else warn, naming them).
            trust_pickle: allow a ``.pth`` holding arbitrary Python objects (trusted files only).
            kwargs: loading options of ``transformers``' ``from_pretrained``:
                ``ignore_mismatched_sizes`` (fresh class heads, with a warning, when the class
                count differs), ``output_loading_info`` (also return the ``LoadReport``),
                ``torch_dtype`` / ``dtype`` (a dtype, its name or ``"auto"``), ``device_map``
                (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``, a device), ``revision``,
                ``cache_dir``, ``local_files_only``, ``token``, ``force_download``,
                ``subfolder``, ``use_safetensors``, ``state_dict``; and config fields to change
                (``num_labels=5``, ``disable_custom_kernels=True``, ...). Any other name raises
                ``TypeError`` naming it; options we cannot honour raise ``NotImplementedError``.
        """
        spec = cls.checkpoint_format
        options, overrides = split_loading_kwargs(kwargs, spec.config_class.field_names())
        if config is not None:
            config = spec.convert_config(config) if spec.convert_config else config
            if not isinstance(config, spec.config_class):
                raise TypeError(f"config must be a {spec.config_class.__name__}, got {type(config).__name__}")
        config, state_dict, unmapped, from_original = read_checkpoint(
            path, config, options, trust_pickle=trust_pickle, config_class=spec.config_class, original=spec.original
        )
        if not isinstance(config, spec.config_class):
            raise TypeError(f"{os.fspath(path)!r} holds a {type(config).__name__}, not a {spec.config_class.__name__}: load it with its own family's class")
        if not from_original:
            state_dict = spec.from_file(detection_layout(state_dict), config)
        if overrides:
            config = config.copy(**overrides)
        dropped: list[str] = []
        detection = detection_layout(state_dict)
        if cls.is_bare:
            state_dict, dropped = bare_layout(detection)
        dtype = auto_dtype(config.extra, state_dict) if options.dtype == "auto" else options.dtype
        # the checkpoint provides the backbone weights: never look for ImageNet ones
        model = cls(config.copy(use_pretrained_backbone=False), backbone_body=backbone_body)
        model.set_config(config)
        if dropped:  # heads a bare model keeps inside its decoder (refinement, two-stage proposals)
            own = set(model.state_dict(keep_vars=True))
            kept = [key for key in dropped if f"decoder.{key}" in own]
            for key in kept:
                state_dict.setdefault(f"decoder.{key}", detection[key])
            dropped = [key for key in dropped if key not in kept]
        heads_missing = not cls.is_bare and not any(key.startswith(_HEAD_PREFIXES) for key in state_dict)
        report = checkpoint_files.load_state_dict_into(
            model,
            state_dict,
            ignore_mismatched_sizes=options.ignore_mismatched_sizes,
            strict=strict and not heads_missing,
            unmapped_keys=unmapped,
            key_alias=None if cls.is_bare else spec.key_alias,
        )
        if dropped:
            report.unexpected_keys.extend(dropped)
            warnings.warn(f"{cls.__name__} has no detection heads: these checkpoint weights were not used: {', '.join(dropped[:20])}"
                          f"{f' ... ({len(dropped)} in all)' if len(dropped) > 20 else ''}", stacklevel=2)
        place(model, dtype, resolve_device(options.device_map))
        model.eval()
        return (model, report) if options.output_loading_info else model

    def set_config(self, config: Any) -> None:
        """Use ``config`` (e.g. the checkpoint's, with ``use_pretrained_backbone`` as written) here
        and in the inner model."""
        self.config = config
        inner = getattr(self, "model", None)
        if isinstance(inner, nn.Module) and hasattr(inner, "config"):
            inner.config = config

    def save_config(self, directory: str | os.PathLike) -> None:
        """Write ``directory/config.json`` as ``save_pretrained`` does (``architectures`` = this
        class's name, ``use_pretrained_backbone=False``: the weights beside it hold the backbone)."""
        os.makedirs(directory, exist_ok=True)
        data = self.config.to_dict()
        data["architectures"] = [type(self).__name__]
        data["use_pretrained_backbone"] = False
        self.checkpoint_format.config_class.from_dict(data).to_json_file(os.path.join(directory, checkpoint_files.CONFIG_NAME))

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True, *, push_to_hub: bool = False, **hub_kwargs: Any) -> None:
        """Write ``config.json`` (``architectures`` = this class's name) and ``model.safetensors``
        (or ``pytorch_model.bin``); shared heads are written once, as ``transformers`` does. The
        written config has ``use_pretrained_backbone=False``, since the weights include the
        backbone. ``push_to_hub=True`` then uploads the folder (``repo_id`` defaults to its name)."""
        if hub_kwargs and not push_to_hub:
            raise TypeError(f"save_pretrained got unexpected keyword arguments {sorted(hub_kwargs)} (they are push_to_hub options)")
        spec = self.checkpoint_format
        self.save_config(directory)
        config = self.config
        if self.is_bare:
            def rename(state_dict: StateDict) -> StateDict:
                return bare_layout(spec.to_file(detection_layout(state_dict), config))[0]
        else:
            def rename(state_dict: StateDict) -> StateDict:
                return spec.to_file(state_dict, config)
        checkpoint_files.write_state_dict(self, directory, safe_serialization=safe_serialization, rename=rename)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(os.fspath(directory)))
            self.push_to_hub(repo_id, safe_serialization=safe_serialization, **hub_kwargs)
