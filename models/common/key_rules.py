"""Renaming an original repository's state dict to ours by ordered regex rules.

Shared by the families' checkpoint converters: each gives its rules, the patterns of the alias keys
its original model registers twice (same tensors), and where stacked attention projections go.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

Rule = tuple[str, str]


def split_in_proj(key: str, tensor: torch.Tensor, target: str) -> dict[str, torch.Tensor]:
    """``nn.MultiheadAttention``'s stacked ``in_proj_weight`` ``[3C, C]`` (or ``in_proj_bias`` ``[3C]``)
    → ``q_proj``, ``k_proj``, ``v_proj`` in that order; ``target`` is a template with ``{name}``."""
    if tensor.shape[0] % 3 != 0:
        raise ValueError(f"{key} has shape {tuple(tensor.shape)}; expected a first dimension of 3 * d_model")
    return {target.format(name=name): part.clone() for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0))}


def rename_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    *,
    aliases: Sequence[Rule] = (),
    in_proj: Rule | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every key by the first matching rule.

    Args:
        state_dict: the original model's tensors by name.
        rules: ``(pattern, replacement)`` regexes, tried in order.
        aliases: ``(pattern, canonical)`` for keys the original registers a second time; such a key is
            dropped when its canonical key (``re.sub`` of it) is in ``state_dict``, else reported.
        in_proj: ``(pattern, target)``: keys matching ``pattern`` (stacked q/k/v) are split with
            ``split_in_proj``; ``target`` is a replacement template holding ``{name}``.

    ``num_batches_tracked`` buffers are dropped.

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
        alias = next((re.sub(pattern, canonical, key) for pattern, canonical in aliases if re.match(pattern, key)), None)
        if alias is not None:
            if alias not in state_dict:
                unmapped.append(key)
            continue
        if in_proj is not None and re.match(in_proj[0], key):
            converted.update(split_in_proj(key, tensor, re.sub(in_proj[0], in_proj[1], key)))
            continue
        for pattern, replacement in rules:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unmapped.append(key)
    return converted, unmapped


def layer_rules(prefix: str, target: str, parts: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """One renaming rule per part of a layer: ``prefix + theirs + ".(rest)"`` → ``target + ours +
    ".(rest)"``; ``prefix`` is a pattern whose groups (the layer's indices) ``target`` refers to as
    ``\\1`` … ``\\n``; ``parts`` maps the original part name to ours, in rule order."""
    groups = re.compile(prefix).groups
    return tuple((rf"{prefix}{re.escape(theirs)}\.(.*)$", rf"{target}{ours}.\{groups + 1}") for theirs, ours in parts.items())


_LAYER = r"^transformer\.{part}\.layers\.(\d+)\."
# Key renaming rules both original repositories need (DINO's transformer keeps Deformable DETR's
# layer layout): the backbone body, the level embedding, every encoder and decoder layer's parts,
# the input projections and the per-layer heads; (pattern, replacement), first match wins. (The
# decoder's stacked self-attention in_proj is split by ``DECODER_IN_PROJ``; its norm1 follows the
# cross-attention.)
DEFORMABLE_LAYER_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.0\.body\.(.*)$", r"model.backbone.conv_encoder.model.\1"),
    (r"^transformer\.level_embed$", r"model.level_embed"),
    *layer_rules(_LAYER.format(part="encoder"), r"model.encoder.layers.\1.", {
        "self_attn": "self_attn", "norm1": "self_attn_layer_norm", "linear1": "fc1", "linear2": "fc2", "norm2": "final_layer_norm",
    }),
    *layer_rules(_LAYER.format(part="decoder"), r"model.decoder.layers.\1.", {
        "cross_attn": "encoder_attn", "norm1": "encoder_attn_layer_norm", "self_attn.out_proj": "self_attn.out_proj",
        "norm2": "self_attn_layer_norm", "linear1": "fc1", "linear2": "fc2", "norm3": "final_layer_norm",
    }),
    (r"^input_proj\.(\d+)\.(\d+)\.(.*)$", r"model.input_proj.\1.\2.\3"),
    (r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$", r"\1.\2.\3"),
)
# Both repositories register the per-layer heads a second time inside the decoder (same tensors),
# and stack the decoder self-attention's q, k, v in one in_proj (split on load).
DECODER_HEAD_ALIASES = ((r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.*)$", r"\1.\2.\3"),)
DECODER_IN_PROJ = (_LAYER.format(part="decoder") + r"self_attn\.in_proj_(weight|bias)$", r"model.decoder.layers.\1.self_attn.{name}.\2")


def original_arg(args: Any, name: str, default: Any) -> Any:
    """``args.name`` of an original checkpoint's ``args`` (a Namespace or a dict), or ``default``."""
    return args.get(name, default) if isinstance(args, Mapping) else getattr(args, name, default)


# The training arguments both original repositories (Deformable DETR's and DINO's main.py) name
# alike: argument → (config field, type). The repositories differ only in their defaults.
SHARED_ORIGINAL_ARGS: dict[str, tuple[str, type]] = {
    "backbone": ("backbone", str),
    "hidden_dim": ("d_model", int),
    "num_queries": ("num_queries", int),
    "enc_layers": ("encoder_layers", int),
    "dec_layers": ("decoder_layers", int),
    "enc_n_points": ("encoder_n_points", int),
    "dec_n_points": ("decoder_n_points", int),
    "dropout": ("dropout", float),
    "aux_loss": ("auxiliary_loss", bool),
    "set_cost_class": ("class_cost", float),
    "set_cost_bbox": ("bbox_cost", float),
    "set_cost_giou": ("giou_cost", float),
    "bbox_loss_coef": ("bbox_loss_coefficient", float),
    "giou_loss_coef": ("giou_loss_coefficient", float),
    "focal_alpha": ("focal_alpha", float),
}


def shared_original_fields(args: Any, defaults: Mapping[str, Any], num_labels: int) -> dict[str, Any]:
    """Config fields from the arguments in ``SHARED_ORIGINAL_ARGS`` plus ``nheads`` and
    ``dim_feedforward`` (encoder and decoder alike), with the repository's ``defaults`` by argument
    name; ``num_labels`` from the class head; never ImageNet backbone weights (the file has them)."""
    fields = {field: kind(original_arg(args, name, defaults[name])) for name, (field, kind) in SHARED_ORIGINAL_ARGS.items()}
    heads = int(original_arg(args, "nheads", defaults["nheads"]))
    ffn = int(original_arg(args, "dim_feedforward", defaults["dim_feedforward"]))
    fields.update(encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn)
    fields.update(use_pretrained_backbone=False, num_labels=num_labels)
    return fields


def original_num_labels(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of classes of an original-repository (or converted) state dict, from its class head."""
    for key in ("class_embed.0.weight", "class_embed.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    raise ValueError("the checkpoint has no class head (class_embed.0.weight); cannot tell the number of classes")
