"""Reading and writing Deformable DETR checkpoints.

Two sources:

- the Hugging Face layout: a directory with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``). Our models use the same parameter names, so these load without
  renaming, and ``write_pretrained`` writes files ``transformers`` loads.
- the original repository (fundamentalvision/Deformable-DETR): a ``.pth`` file holding ``model``
  (the state dict) and usually ``args`` (the training arguments). ``convert_original_state_dict``
  renames its keys; ``config_from_original_args`` turns ``args`` into a config.

Nothing is silently dropped: keys that do not map, missing keys and unexpected keys are listed by
name in errors or warnings.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from models.config import DeformableDetrConfig

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"

# (pattern, replacement) applied in order to every key of an original-repository state dict;
# the first pattern that matches wins.
_ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.0\.body\.(.*)$", r"model.backbone.conv_encoder.model.\1"),
    (r"^backbone\.1\.row_embed\.(.*)$", r"model.backbone.position_embedding.row_embeddings.\1"),
    (r"^backbone\.1\.col_embed\.(.*)$", r"model.backbone.position_embedding.column_embeddings.\1"),
    (r"^transformer\.level_embed$", r"model.level_embed"),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.(.*)$", r"model.encoder.layers.\1.self_attn.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.(.*)$", r"model.encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.(.*)$", r"model.encoder.layers.\1.fc1.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.(.*)$", r"model.encoder.layers.\1.fc2.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.(.*)$", r"model.encoder.layers.\1.final_layer_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.(.*)$", r"model.decoder.layers.\1.encoder_attn.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.(.*)$", r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.*)$", r"model.decoder.layers.\1.self_attn.out_proj.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.(.*)$", r"model.decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.(.*)$", r"model.decoder.layers.\1.fc1.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.(.*)$", r"model.decoder.layers.\1.fc2.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.(.*)$", r"model.decoder.layers.\1.final_layer_norm.\2"),
    (r"^transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(.*)$", r"model.\1.\2"),
    (r"^query_embed\.weight$", r"model.query_position_embeddings.weight"),
    (r"^input_proj\.(\d+)\.(\d+)\.(.*)$", r"model.input_proj.\1.\2.\3"),
    (r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$", r"\1.\2.\3"),
    (r"^class_embed\.(weight|bias)$", r"class_embed.0.\1"),
    (r"^bbox_embed\.layers\.(.*)$", r"bbox_embed.0.layers.\1"),
)
# The original model registers its heads a second time inside the decoder (same tensors).
_ORIGINAL_ALIASES = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.*)$")
_IN_PROJ = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")
# Hugging Face models also register the heads inside the decoder; the files may or may not hold them.
_HF_DECODER_ALIAS = re.compile(r"^model\.decoder\.(class_embed|bbox_embed)\.(.*)$")


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


# ------------------------------------------------------------------------------- original repo
def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original-repository state dict to our (= Hugging Face) key layout.

    The decoder's stacked self-attention projection ``in_proj_weight`` ``[3C, C]`` (and
    ``in_proj_bias``) is split into ``q_proj``, ``k_proj``, ``v_proj`` (in that order).
    ``num_batches_tracked`` buffers and the decoder's alias copies of the heads are dropped.

    Returns:
        (renamed state dict, keys that matched no rule).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        alias = _ORIGINAL_ALIASES.match(key)
        if alias:
            canonical = f"{alias.group(1)}.{alias.group(2)}.{alias.group(3)}"
            if canonical not in state_dict:
                unmapped.append(key)
            continue
        in_proj = _IN_PROJ.match(key)
        if in_proj:
            layer, kind = in_proj.groups()
            if tensor.shape[0] % 3 != 0:
                raise ValueError(f"{key} has shape {tuple(tensor.shape)}; expected a first dimension of 3 * d_model")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"model.decoder.layers.{layer}.self_attn.{name}.{kind}"] = part.clone()
            continue
        for pattern, replacement in _ORIGINAL_RULES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unmapped.append(key)
    return converted, unmapped


def _arg(args: Any, name: str, default: Any) -> Any:
    if isinstance(args, Mapping):
        return args.get(name, default)
    return getattr(args, name, default)


def config_from_original_args(args: Any, num_labels: int, **overrides: Any) -> DeformableDetrConfig:
    """A config for the variant an original-repository run trained (its ``args``).

    Args:
        args: the ``argparse.Namespace`` (or a dict) saved as ``checkpoint["args"]``.
        num_labels: classes of the class head (read from its weight's shape).
        overrides: config fields that win over ``args``.
    """
    position = _arg(args, "position_embedding", "sine")
    values: dict[str, Any] = {
        "backbone": _arg(args, "backbone", "resnet50"),
        "dilation": bool(_arg(args, "dilation", False)),
        "position_embedding_type": "learned" if position in ("v3", "learned") else "sine",
        "num_feature_levels": int(_arg(args, "num_feature_levels", 4)),
        "encoder_n_points": int(_arg(args, "enc_n_points", 4)),
        "decoder_n_points": int(_arg(args, "dec_n_points", 4)),
        "with_box_refine": bool(_arg(args, "with_box_refine", False)),
        "two_stage": bool(_arg(args, "two_stage", False)),
        "d_model": int(_arg(args, "hidden_dim", 256)),
        "num_queries": int(_arg(args, "num_queries", 300)),
        "two_stage_num_proposals": int(_arg(args, "num_queries", 300)),
        "encoder_layers": int(_arg(args, "enc_layers", 6)),
        "decoder_layers": int(_arg(args, "dec_layers", 6)),
        "encoder_ffn_dim": int(_arg(args, "dim_feedforward", 1024)),
        "decoder_ffn_dim": int(_arg(args, "dim_feedforward", 1024)),
        "encoder_attention_heads": int(_arg(args, "nheads", 8)),
        "decoder_attention_heads": int(_arg(args, "nheads", 8)),
        "dropout": float(_arg(args, "dropout", 0.1)),
        "auxiliary_loss": bool(_arg(args, "aux_loss", True)),
        "class_cost": float(_arg(args, "set_cost_class", 2)),
        "bbox_cost": float(_arg(args, "set_cost_bbox", 5)),
        "giou_cost": float(_arg(args, "set_cost_giou", 2)),
        "bbox_loss_coefficient": float(_arg(args, "bbox_loss_coef", 5)),
        "giou_loss_coefficient": float(_arg(args, "giou_loss_coef", 2)),
        "focal_alpha": float(_arg(args, "focal_alpha", 0.25)),
        "use_pretrained_backbone": False,
        "num_labels": num_labels,
    }
    values.update(overrides)
    return DeformableDetrConfig(**values)


def read_original_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """Load an original-repository ``.pth``: returns (state dict, ``args`` or None).

    The file is read with ``weights_only=True`` (allowing ``argparse.Namespace``); a file needing
    other Python objects loads only with ``trust_pickle=True`` (it can run code: trusted files only).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not trust_pickle:
            raise RuntimeError(
                f"{path} holds Python objects that weights_only loading refuses ({error}); if you trust the file, "
                "pass trust_pickle=True"
            ) from error
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, Mapping) and "model" in checkpoint:
        return dict(checkpoint["model"]), checkpoint.get("args")
    if isinstance(checkpoint, Mapping) and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint), None
    raise ValueError(f"{path} is not an original Deformable DETR checkpoint: expected a dict with a 'model' state dict")


def original_num_labels(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of classes of an original-repository (or converted) state dict, from its class head."""
    for key in ("class_embed.0.weight", "class_embed.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    raise ValueError("the checkpoint has no class head (class_embed.0.weight); cannot tell the number of classes")


# --------------------------------------------------------------------------- Hugging Face layout
def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of ``directory/model.safetensors`` (preferred) or ``directory/pytorch_model.bin``."""
    directory = os.fspath(directory)
    safetensors_path = os.path.join(directory, SAFETENSORS_NAME)
    pytorch_path = os.path.join(directory, PYTORCH_NAME)
    if os.path.isfile(safetensors_path):
        from safetensors.torch import load_file

        return load_file(safetensors_path)
    if os.path.isfile(pytorch_path):
        return torch.load(pytorch_path, map_location="cpu", weights_only=True)
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    raise FileNotFoundError(f"{directory!r} holds neither {SAFETENSORS_NAME} nor {PYTORCH_NAME} (found: {present}); sharded checkpoints are not supported")


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every shared tensor kept once, under its first name.

    This is what ``transformers`` writes (it ties the copies again on load).
    """
    state = model.state_dict()
    chosen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        if not tensor.numel():
            chosen[(id(tensor), 0, ())] = name
            continue
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        # among copies keep the shortest name: "bbox_embed.0..." rather than "model.decoder.bbox_embed.0..."
        if identity not in chosen or len(name) < len(chosen[identity]):
            chosen[identity] = name
    keep = set(chosen.values())
    return {name: tensor.detach().contiguous() for name, tensor in state.items() if name in keep}


def write_state_dict(model: nn.Module, directory: str | os.PathLike, safe_serialization: bool = True, rename=None) -> str:
    """Write the unique tensors of ``model`` to ``directory`` (safetensors or pytorch_model.bin);
    ``rename`` (a function on the whole dict) may change key names first."""
    os.makedirs(directory, exist_ok=True)
    tensors = unique_state_dict(model)
    if rename is not None:
        tensors = rename(tensors)
    if safe_serialization:
        from safetensors.torch import save_file

        path = os.path.join(directory, SAFETENSORS_NAME)
        save_file({name: tensor.cpu() for name, tensor in tensors.items()}, path, metadata={"format": "pt"})
    else:
        path = os.path.join(directory, PYTORCH_NAME)
        torch.save({name: tensor.cpu() for name, tensor in tensors.items()}, path)
    return path


# --------------------------------------------------------------------------------- loading
def _shared_groups(model: nn.Module) -> list[list[str]]:
    """Names of the state-dict entries that share one tensor, grouped (groups of 2+ only)."""
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel():
            groups.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_labels_from: str = "class_embed.0.weight",
    ignore_mismatched_sizes: bool = False,
    strict: bool = True,
    unmapped_keys: list[str] | None = None,
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` with full reporting.

    - Entries that ``model`` shares between names (e.g. one class head used by every decoder
      layer, or the heads the decoder also holds) may appear under any one of their names.
    - A class head of another size raises ``ValueError`` naming both sizes, unless
      ``ignore_mismatched_sizes``: then every mismatched tensor keeps its fresh initialisation
      and a warning names them.
    - Missing or unexpected keys (and ``unmapped_keys`` from a conversion) raise ``KeyError``
      naming them when ``strict``; otherwise they are named in a warning.
    """
    report = LoadReport(unmapped_keys=list(unmapped_keys or []))
    own = model.state_dict()
    incoming = dict(state_dict)

    for names in _shared_groups(model):
        present = [name for name in names if name in incoming]
        if present:
            for name in names:
                incoming.setdefault(name, incoming[present[0]])
    for key in list(incoming):
        alias = _HF_DECODER_ALIAS.match(key)
        if alias and key not in own:
            canonical = f"{alias.group(1)}.{alias.group(2)}"
            if canonical in incoming or canonical in own:
                incoming.setdefault(canonical, incoming[key])
                del incoming[key]
    for key in list(incoming):
        if key.endswith("num_batches_tracked") and key not in own:
            del incoming[key]

    head = own.get(num_labels_from)
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
    if report.mismatched_keys:
        raise ValueError(f"checkpoint tensors do not fit the model: {', '.join(report.mismatched_keys)}")
    if not report.clean:
        message = f"checkpoint and model disagree: {report.describe()}"
        if strict:
            raise KeyError(message + " (pass strict=False to load anyway)")
        warnings.warn(message, stacklevel=3)
    if report.fresh_keys:
        warnings.warn(
            f"these tensors have other shapes in the checkpoint and keep their fresh initialisation (train them): {', '.join(report.fresh_keys)}",
            stacklevel=3,
        )
    model.load_state_dict(to_load, strict=False)
    return report


# ------------------------------------------------------- transformers' own ResNet (AutoBackbone)
BACKBONE_PREFIX = "model.backbone.conv_encoder.model."


def backbone_keys_from_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the backbone keys of a ``use_timm_backbone=False`` checkpoint (transformers' ResNet
    naming) to the torchvision naming our backbone uses."""
    from models.backbone import hf_resnet_key_to_torchvision

    return {
        (BACKBONE_PREFIX + hf_resnet_key_to_torchvision(key[len(BACKBONE_PREFIX):]) if key.startswith(BACKBONE_PREFIX) else key): tensor
        for key, tensor in state_dict.items()
    }


def backbone_keys_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``backbone_keys_from_transformers`` (for ``save_pretrained``)."""
    from models.backbone import torchvision_key_to_hf_resnet

    return {
        (BACKBONE_PREFIX + torchvision_key_to_hf_resnet(key[len(BACKBONE_PREFIX):]) if key.startswith(BACKBONE_PREFIX) else key): tensor
        for key, tensor in state_dict.items()
    }
