"""RT-DETR's checkpoint conversion: the authors' ``.pth`` files (lyuwenyu/RT-DETR, ``rtdetr_pytorch``).

The authors' solver saves ``{"model": state_dict, "ema": {"module": state_dict, ...}, ...}`` and
evaluates the EMA weights when there are any; their released ``*_from_paddle.pth`` files hold the
weights under ``ema.module``. Neither carries the configuration: that is the YAML file the run was
started with (``configs/rtdetr/rtdetr_r50vd_6x_coco.yml`` and its ``__include__`` files).

``convert_original_state_dict`` renames the keys to ours (``transformers``' layout): the PResNet
backbone (``backbone.conv1.conv1_N``, ``backbone.res_layers.S.blocks.B.branch2X`` / ``short``) to the
ResNet-vd body, ``encoder.input_proj`` to ``encoder_input_proj``, the AIFI layers, the decoder's
``input_proj``, layers, ``query_pos_head``, ``enc_output`` / ``enc_score_head`` / ``enc_bbox_head``,
``tgt_embed``, ``denoising_class_embed``, and the per-layer heads ``dec_score_head`` /
``dec_bbox_head``; the stacked ``nn.MultiheadAttention`` projections of both attention stacks are split
into q / k / v. ``config_from_original_args`` turns the merged YAML (a dict; ``read_original_yaml``
follows the includes) into an ``RTDetrConfig`` and refuses, by name, the options this RT-DETR does
not implement. Not carried into the config because they only steer the authors' training or
post-processing: ``PResNet.freeze_at`` (parameters frozen in the stem and first stages),
``PResNet.pretrained``, ``RTDETR.multi_scale``, ``RTDETRPostProcessor`` (``num_top_queries``,
``remap_mscoco_category``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from models.backbones.resnet_vd import DEFAULT_WIDTHS, RESNET_VD_VARIANTS
from models.common.key_rules import layer_rules, rename_state_dict, split_in_proj
from models.rt_detr.config import BACKBONE_MODEL_TYPE, RTDetrConfig

_BODY = "model.backbone.model."
_STAGE = r"^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\."
_NORM = r"(conv|norm)\.(.*)$"
_STEM_INDEX = {"conv1_1": "0", "conv1_2": "1", "conv1_3": "2"}
_BRANCH_INDEX = {"branch2a": "0", "branch2b": "1", "branch2c": "2"}
# A layer's parts: the authors' name → ours (the AIFI layer, then the decoder layer, whose norm1
# follows the self-attention and norm2 the cross-attention).
_AIFI_PARTS = {"self_attn": "self_attn", "linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_DECODER_PARTS = {"self_attn": "self_attn", "norm1": "self_attn_layer_norm", "cross_attn": "encoder_attn", "norm2": "encoder_attn_layer_norm",
                  "linear1": "fc1", "linear2": "fc2", "norm3": "final_layer_norm"}


# Modules moved whole: the authors' prefix → ours.
_MODULES = {
    "encoder.input_proj": "model.encoder_input_proj",
    **{f"encoder.{name}": f"model.encoder.{name}" for name in ("lateral_convs", "fpn_blocks", "downsample_convs", "pan_blocks")},
    "decoder.query_pos_head": "model.decoder.query_pos_head",
    **{f"decoder.{name}": f"model.{name}" for name in ("enc_output", "enc_score_head", "enc_bbox_head", "denoising_class_embed")},
    "decoder.tgt_embed": "model.weight_embedding",
    "decoder.dec_score_head": "class_embed",
    "decoder.dec_bbox_head": "bbox_embed",
}

# (pattern, replacement), first match wins. ``conv`` / ``norm`` of the authors' ConvNormLayer and the
# stem / branch names become ours in a second step (``_backbone_names``); the stacked attention
# projections keep their names here and are split afterwards.
_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.conv1\.(conv1_\d)\." + _NORM, _BODY + r"embedder.embedder.\1.\2.\3"),
    (_STAGE + r"short\.conv\." + _NORM, _BODY + r"encoder.stages.\1.layers.\2.shortcut.1.\3.\4"),
    (_STAGE + r"short\." + _NORM, _BODY + r"encoder.stages.\1.layers.\2.shortcut.\3.\4"),
    (_STAGE + r"(branch2[abc])\." + _NORM, _BODY + r"encoder.stages.\1.layers.\2.layer.\3.\4.\5"),
    *layer_rules(r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.", r"model.encoder.encoder.\1.layers.\2.", _AIFI_PARTS),
    *layer_rules(r"^decoder\.decoder\.layers\.(\d+)\.", r"model.decoder.layers.\1.", _DECODER_PARTS),
    *layer_rules(r"^decoder\.input_proj\.(\d+)\.", r"model.decoder_input_proj.\1.", {"conv": "0", "norm": "1"}),
    *((rf"^{re.escape(theirs)}\.(.*)$", rf"{ours}.\1") for theirs, ours in _MODULES.items()),
)
_IN_PROJ = re.compile(r"^(.*\.self_attn)\.in_proj_(weight|bias)$")


def _backbone_names(key: str) -> str:
    """The ResNet-vd body's names: ``conv1_N`` → stem index, ``branch2X`` → layer index,
    ``conv`` / ``norm`` → ``convolution`` / ``normalization``."""
    if not key.startswith(_BODY):
        return key
    parts = [_STEM_INDEX.get(part, _BRANCH_INDEX.get(part, part)) for part in key[len(_BODY):].split(".")]
    parts[-2] = {"conv": "convolution", "norm": "normalization"}.get(parts[-2], parts[-2])
    return _BODY + ".".join(parts)


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the authors' RT-DETR state dict to our key layout; returns (renamed, keys matching no rule).

    A BatchNorm's ``num_batches_tracked`` follows its ``running_mean`` (the authors' frozen backbone
    norms have none, like ours).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    renamed, unmapped = rename_state_dict(state_dict, _RULES)
    counters = {key[: -len("num_batches_tracked")] + "running_mean": tensor for key, tensor in state_dict.items() if key.endswith(".num_batches_tracked")}
    for key, tensor in rename_state_dict(counters, _RULES)[0].items():
        renamed[key[: -len("running_mean")] + "num_batches_tracked"] = tensor
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in renamed.items():
        stacked = _IN_PROJ.match(key)
        if stacked:
            converted.update(split_in_proj(key, tensor, f"{stacked.group(1)}.{{name}}.{stacked.group(2)}"))
        else:
            converted[_backbone_names(key)] = tensor
    return converted, unmapped


# --------------------------------------------------------------------------------------- config
# The authors' constructor defaults (src/nn/backbone/presnet.py, src/zoo/rtdetr/*.py), used where the
# YAML does not set a field.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "PResNet": {"variant": "d", "num_stages": 4, "return_idx": [0, 1, 2, 3], "act": "relu", "freeze_norm": True},
    "HybridEncoder": {
        "in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256, "nhead": 8, "dim_feedforward": 1024,
        "dropout": 0.0, "enc_act": "gelu", "use_encoder_idx": [2], "num_encoder_layers": 1, "pe_temperature": 10000,
        "expansion": 1.0, "depth_mult": 1.0, "act": "silu", "eval_spatial_size": None,
    },
    "RTDETRTransformer": {
        "hidden_dim": 256, "num_queries": 300, "feat_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "num_levels": 3,
        "num_decoder_points": 4, "nhead": 8, "num_decoder_layers": 6, "dim_feedforward": 1024, "dropout": 0.0, "activation": "relu",
        "num_denoising": 100, "label_noise_ratio": 0.5, "box_noise_scale": 1.0, "learnt_init_query": False,
        "eval_spatial_size": None, "eval_idx": -1, "eps": 1e-2, "aux_loss": True,
    },
    "SetCriterion": {"weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["vfl", "boxes"], "alpha": 0.2, "gamma": 2.0,
                     "eos_coef": 1e-4},
    "HungarianMatcher": {"weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0},
}
# Components this RT-DETR implements (the YAML's choice of registered class for each slot).
_COMPONENTS = {("model",): "RTDETR", ("RTDETR", "backbone"): "PResNet", ("RTDETR", "encoder"): "HybridEncoder",
               ("RTDETR", "decoder"): "RTDETRTransformer", ("criterion",): "SetCriterion"}


def _section(args: Mapping[str, Any], name: str) -> dict[str, Any]:
    given = args.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"the YAML's {name} must be a mapping of its arguments, got {type(given).__name__}")
    return {**_DEFAULTS[name], **given}


def _backbone_config(presnet: Mapping[str, Any]) -> dict[str, Any]:
    depth = presnet.get("depth")
    if f"resnet{depth}vd" not in RESNET_VD_VARIANTS:
        raise ValueError(f"PResNet.depth must be one of 18, 34, 50, 101, got {depth!r}")
    layer_type, depths = RESNET_VD_VARIANTS[f"resnet{depth}vd"]
    stages = int(presnet["num_stages"])
    if not 1 <= stages <= len(depths):
        raise ValueError(f"PResNet.num_stages must be in 1..{len(depths)}, got {stages}")
    return {
        "model_type": BACKBONE_MODEL_TYPE, "layer_type": layer_type, "depths": list(depths[:stages]),
        "hidden_sizes": list(DEFAULT_WIDTHS[layer_type][:stages]), "embedding_size": 64,
        "out_indices": [int(index) + 1 for index in presnet["return_idx"]],
    }


def _unsupported(args: Mapping[str, Any], presnet: dict, encoder: dict, decoder: dict, criterion: dict, matcher: dict) -> list[str]:
    """Every option whose value this RT-DETR does not implement, as ``Section.name=value (why)``."""
    found = []
    for path, expected in _COMPONENTS.items():
        value = args.get(path[0]) if len(path) == 1 else (args.get(path[0]) or {}).get(path[1], expected)
        if value is not None and value != expected:
            found.append(f"{'.'.join(path)}={value!r} (only {expected})")
    checks = [
        ("PResNet.variant", presnet["variant"], "d", "ResNet-vd only"),
        ("PResNet.act", presnet["act"], "relu", "ResNet-vd uses ReLU"),
        ("HybridEncoder.depth_mult", encoder["depth_mult"], 1.0, "three RepVGG blocks per CSP layer, as transformers"),
        ("HybridEncoder.dropout", encoder["dropout"], 0.0, "the authors drop attention weights and activations too"),
        ("RTDETRTransformer.dropout", decoder["dropout"], 0.0, "the authors drop attention weights and activations too"),
        ("RTDETRTransformer.eps", decoder["eps"], 1e-2, "anchors are valid in (0.01, 0.99)"),
        ("RTDETRTransformer.feat_strides", list(decoder["feat_strides"])[:len(encoder["feat_strides"])], list(encoder["feat_strides"]),
         "one feat_strides for encoder and anchors"),
        ("use_focal_loss", args.get("use_focal_loss", True), True, "sigmoid class heads and focal matching costs only"),
        ("SetCriterion.losses", sorted(criterion["losses"]), ["boxes", "vfl"], "varifocal + L1/GIoU"),
        ("SetCriterion.weight_dict", sorted(criterion["weight_dict"]), ["loss_bbox", "loss_giou", "loss_vfl"], "weights of vfl, bbox, giou"),
        ("SetCriterion.matcher.type", matcher.get("type", "HungarianMatcher"), "HungarianMatcher", "the Hungarian matcher"),
    ]
    found += [f"{name}={value!r} ({why})" for name, value, expected, why in checks if value != expected]
    eval_idx, layers = int(decoder["eval_idx"]), int(decoder["num_decoder_layers"])
    if eval_idx not in (-1, layers - 1):
        found.append(f"RTDETRTransformer.eval_idx={eval_idx} (detections from the last of the {layers} decoder layers only; "
                     f"a checkpoint evaluated at layer {eval_idx} needs num_decoder_layers={eval_idx + 1} and its later layers dropped)")
    return found


def config_from_original_args(args: Mapping[str, Any], num_labels: int, **overrides: Any) -> RTDetrConfig:
    """An ``RTDetrConfig`` for the architecture an authors' YAML describes.

    Args:
        args: the merged YAML (``read_original_yaml``), with the sections ``PResNet``,
            ``HybridEncoder``, ``RTDETRTransformer``, ``SetCriterion`` (with ``matcher``) and the
            top-level ``use_focal_loss``; fields a section leaves out take the authors' defaults.
        num_labels: the class count (from the checkpoint's class heads).
        overrides: ``RTDetrConfig`` fields set last (e.g. ``backbone_config`` for a narrower ResNet-vd).

    Raises ``ValueError`` naming every option whose value this RT-DETR does not implement.
    """
    if not isinstance(args, Mapping):
        raise TypeError(f"args must be the authors' merged YAML as a dict, got {type(args).__name__}")
    if "PResNet" not in args:
        raise ValueError("the YAML has no PResNet section (its depth fixes the backbone): pass the merged YAML (read_original_yaml)")
    presnet, encoder, decoder = _section(args, "PResNet"), _section(args, "HybridEncoder"), _section(args, "RTDETRTransformer")
    criterion = _section(args, "SetCriterion")
    matcher = {**_DEFAULTS["HungarianMatcher"], **(criterion.get("matcher") or {})}
    unsupported = _unsupported(args, presnet, encoder, decoder, criterion, matcher)
    if unsupported:
        raise ValueError(f"the YAML uses options this RT-DETR does not implement: {'; '.join(unsupported)}")
    weights, costs = criterion["weight_dict"], matcher["weight_dict"]
    values: dict[str, Any] = {
        "backbone_config": _backbone_config(presnet),
        "freeze_backbone_batch_norms": bool(presnet["freeze_norm"]),
        "encoder_hidden_dim": int(encoder["hidden_dim"]),
        "encoder_in_channels": [int(width) for width in encoder["in_channels"]],
        "feat_strides": [int(stride) for stride in encoder["feat_strides"]],
        "encoder_layers": int(encoder["num_encoder_layers"]),
        "encoder_ffn_dim": int(encoder["dim_feedforward"]),
        "encoder_attention_heads": int(encoder["nhead"]),
        "encode_proj_layers": [int(index) for index in encoder["use_encoder_idx"]],
        "positional_encoding_temperature": encoder["pe_temperature"],
        "encoder_activation_function": encoder["enc_act"],
        "activation_function": encoder["act"],
        "hidden_expansion": float(encoder["expansion"]),
        "eval_size": list(encoder["eval_spatial_size"]) if encoder["eval_spatial_size"] else None,
        "d_model": int(decoder["hidden_dim"]),
        "num_queries": int(decoder["num_queries"]),
        "decoder_in_channels": [int(width) for width in decoder["feat_channels"]],
        "decoder_ffn_dim": int(decoder["dim_feedforward"]),
        "num_feature_levels": int(decoder["num_levels"]),
        "decoder_n_points": int(decoder["num_decoder_points"]),
        "decoder_layers": int(decoder["num_decoder_layers"]),
        "decoder_attention_heads": int(decoder["nhead"]),
        "decoder_activation_function": decoder["activation"],
        "num_denoising": int(decoder["num_denoising"]),
        "label_noise_ratio": float(decoder["label_noise_ratio"]),
        "box_noise_scale": float(decoder["box_noise_scale"]),
        "learn_initial_query": bool(decoder["learnt_init_query"]),
        "anchor_image_size": list(decoder["eval_spatial_size"]) if decoder["eval_spatial_size"] else None,
        "auxiliary_loss": bool(decoder["aux_loss"]),
        "weight_loss_vfl": float(weights["loss_vfl"]), "weight_loss_bbox": float(weights["loss_bbox"]),
        "weight_loss_giou": float(weights["loss_giou"]),
        "focal_loss_alpha": float(criterion["alpha"]), "focal_loss_gamma": float(criterion["gamma"]),
        "eos_coefficient": float(criterion["eos_coef"]),
        "matcher_class_cost": float(costs["cost_class"]), "matcher_bbox_cost": float(costs["cost_bbox"]),
        "matcher_giou_cost": float(costs["cost_giou"]),
        "matcher_alpha": float(matcher["alpha"]), "matcher_gamma": float(matcher["gamma"]),
        "use_focal_loss": True,
        "num_labels": int(num_labels),
    }
    values.update(overrides)
    return RTDetrConfig(**values)


def read_original_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """An authors' YAML config with its ``__include__`` files merged in (includes first, in order,
    then the file itself; nested mappings merged key by key), as their ``load_config`` does.
    Needs ``pyyaml``."""
    import yaml

    path = os.fspath(path)
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    merged: dict[str, Any] = {}
    for include in data.pop("__include__", []):
        include = os.path.expanduser(include)
        _merge(merged, read_original_yaml(include if os.path.isabs(include) else os.path.join(os.path.dirname(path), include)))
    return _merge(merged, data)


def _merge(target: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target
