"""Deformable DETR's checkpoint conversions.

- the original repository (fundamentalvision/Deformable-DETR): a ``.pth`` file holding ``model``
  (the state dict) and usually ``args`` (the training arguments). ``convert_original_state_dict``
  renames its keys; ``config_from_original_args`` turns ``args`` into a config.
- the Hugging Face layout needs no renaming (our parameter names are theirs), except the heads
  that ``transformers`` also registers inside the decoder (``hf_decoder_alias``); the backbone of
  ``use_timm_backbone=False`` checkpoints speaks transformers' ResNet names itself
  (``models.backbones.hf_resnet.use_transformers_key_names``).

Reading, writing and loading the files is ``models.common.checkpoint_files``. Nothing is silently
dropped: keys that do not map are listed by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from models.common.key_rules import DECODER_HEAD_ALIASES, DECODER_IN_PROJ, DEFORMABLE_LAYER_RULES, rename_state_dict, shared_original_fields
from models.common.key_rules import original_arg as _arg
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.variant_table import VARIANT_SWITCHES

# (pattern, replacement) applied in order to every key of an original-repository state dict;
# the first pattern that matches wins.
_ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.1\.row_embed\.(.*)$", r"model.backbone.position_embedding.row_embeddings.\1"),
    (r"^backbone\.1\.col_embed\.(.*)$", r"model.backbone.position_embedding.column_embeddings.\1"),
    *DEFORMABLE_LAYER_RULES,
    (r"^transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(.*)$", r"model.\1.\2"),
    (r"^query_embed\.weight$", r"model.query_position_embeddings.weight"),
    (r"^class_embed\.(weight|bias)$", r"class_embed.0.\1"),
    (r"^bbox_embed\.layers\.(.*)$", r"bbox_embed.0.layers.\1"),
)
# Hugging Face models also register the heads inside the decoder; the files may or may not hold them.
_HF_DECODER_ALIAS = re.compile(r"^model\.decoder\.(class_embed|bbox_embed)\.(.*)$")


# ------------------------------------------------------------------------------- original repo
# The original repository's defaults (main.py) of the arguments both repositories share.
_ORIGINAL_DEFAULTS = {
    "backbone": "resnet50", "hidden_dim": 256, "num_queries": 300, "enc_layers": 6, "dec_layers": 6, "enc_n_points": 4,
    "dec_n_points": 4, "dropout": 0.1, "aux_loss": True, "set_cost_class": 2, "set_cost_bbox": 5, "set_cost_giou": 2,
    "bbox_loss_coef": 5, "giou_loss_coef": 2, "focal_alpha": 0.25, "nheads": 8, "dim_feedforward": 1024,
}
# H-Deformable-DETR's arguments, named as our config fields (absent from plain Deformable DETR runs: off)
_HYBRID_ARGS: dict[str, tuple[type, Any]] = {
    "num_queries_one2many": (int, 0), "k_one2many": (int, 5), "lambda_one2many": (float, 1.0),
    "mixed_selection": (bool, False), "look_forward_twice": (bool, False),
}


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original-repository state dict to our (= Hugging Face) key layout.

    The decoder's stacked self-attention projection ``in_proj_weight`` ``[3C, C]`` (and
    ``in_proj_bias``) is split into ``q_proj``, ``k_proj``, ``v_proj`` (in that order).
    ``num_batches_tracked`` buffers and the decoder's alias copies of the heads are dropped.

    Returns:
        (renamed state dict, keys that matched no rule).
    """
    return rename_state_dict(state_dict, _ORIGINAL_RULES, aliases=DECODER_HEAD_ALIASES, in_proj=DECODER_IN_PROJ)


def config_from_original_args(args: Any, num_labels: int, **overrides: Any) -> DeformableDetrConfig:
    """A config for the variant an original-repository run trained (its ``args``).

    Args:
        args: the ``argparse.Namespace`` (or a dict) saved as ``checkpoint["args"]``.
        num_labels: classes of the class head (read from its weight's shape).
        overrides: config fields that win over ``args``.
    """
    values = shared_original_fields(args, _ORIGINAL_DEFAULTS, num_labels)
    position = _arg(args, "position_embedding", "sine")
    values["position_embedding_type"] = "learned" if position in ("v3", "learned") else "sine"
    # H-Deformable-DETR's runs name the one-to-one queries num_queries_one2one
    values["num_queries"] = values["two_stage_num_proposals"] = int(_arg(args, "num_queries_one2one", values["num_queries"]))
    values["class_loss_coefficient"] = float(_arg(args, "cls_loss_coef", 2))
    values.update({field: kind(_arg(args, field, default)) for field, (kind, default) in _HYBRID_ARGS.items()})
    # the variant switches, named as in the variant table (the original args use the same names)
    defaults = DeformableDetrConfig(use_pretrained_backbone=False)
    values.update({name: type(getattr(defaults, name))(_arg(args, name, getattr(defaults, name))) for name in VARIANT_SWITCHES})
    values.update(overrides)
    return DeformableDetrConfig(**values)


def hf_decoder_alias(key: str) -> str | None:
    """``model.decoder.class_embed.N...`` / ``model.decoder.bbox_embed.N...`` (the heads that
    ``transformers`` also registers inside the decoder) → the top-level head key; else None."""
    alias = _HF_DECODER_ALIAS.match(key)
    return f"{alias.group(1)}.{alias.group(2)}" if alias else None
