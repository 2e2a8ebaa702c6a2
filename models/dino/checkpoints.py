"""DINO's checkpoint conversion: the original training script's ``.pth`` (IDEA-Research/DINO).

``convert_original_state_dict`` renames the keys to ours (the decoder's stacked self-attention
projection is split into q/k/v; the heads the original also registers inside the transformer are
dropped as aliases); ``config_from_original_args`` turns ``args`` into a ``DinoConfig`` and
refuses, by name, the options of the original code this assembly does not implement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from models.common.key_rules import DECODER_HEAD_ALIASES, DECODER_IN_PROJ, DEFORMABLE_LAYER_RULES, rename_state_dict, shared_original_fields
from models.common.key_rules import original_arg as _arg
from models.dino.config import DinoConfig

_ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    *DEFORMABLE_LAYER_RULES,
    (r"^transformer\.decoder\.norm\.(.*)$", r"model.decoder.intermediate_norm.\1"),
    (r"^transformer\.decoder\.ref_point_head\.(.*)$", r"model.decoder.query_position.mlp.\1"),
    (r"^transformer\.(enc_output|enc_output_norm|enc_out_class_embed|enc_out_bbox_embed|tgt_embed)\.(.*)$", r"model.\1.\2"),
    (r"^label_enc\.(.*)$", r"model.label_enc.\1"),
)

# Options of the original code, and the value this assembly implements (anything else is refused).
_IMPLEMENTED: dict[str, Any] = {
    "two_stage_type": "standard",
    "decoder_sa_type": "sa",
    "decoder_module_seq": ["sa", "ca", "ffn"],
    "num_patterns": 0,
    "two_stage_pat_embed": 0,
    "two_stage_add_query_num": 0,
    "two_stage_learn_wh": False,
    "two_stage_keep_all_tokens": False,
    "dec_layer_number": None,
    "use_deformable_box_attn": False,
    "pre_norm": False,
    "embed_init_tgt": True,
    "use_detached_boxes_dec_out": False,
    "position_embedding": "sine",
    "masks": False,
}


# DINO's defaults (config/DINO/DINO_4scale.py) of the arguments both repositories share.
_ORIGINAL_DEFAULTS = {
    "backbone": "resnet50", "hidden_dim": 256, "num_queries": 900, "enc_layers": 6, "dec_layers": 6, "enc_n_points": 4,
    "dec_n_points": 4, "dropout": 0.0, "aux_loss": True, "set_cost_class": 2.0, "set_cost_bbox": 5.0, "set_cost_giou": 2.0,
    "bbox_loss_coef": 5.0, "giou_loss_coef": 2.0, "focal_alpha": 0.25, "nheads": 8, "dim_feedforward": 2048,
}


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original DINO state dict to our key layout; returns (renamed, keys matching no rule)."""
    return rename_state_dict(state_dict, _ORIGINAL_RULES, aliases=DECODER_HEAD_ALIASES, in_proj=DECODER_IN_PROJ)


def config_from_original_args(args: Any, num_labels: int, **overrides: Any) -> DinoConfig:
    """A ``DinoConfig`` for the architecture an original run trained (its ``args``).

    Raises ``ValueError`` naming every option whose value this assembly does not implement.
    """
    unsupported = [f"{name}={_arg(args, name, value)!r}" for name, value in _IMPLEMENTED.items() if _arg(args, name, value) != value]
    if _arg(args, "pe_temperatureH", 20) != _arg(args, "pe_temperatureW", 20):
        unsupported.append("pe_temperatureH != pe_temperatureW")
    if unsupported:
        raise ValueError(f"the checkpoint's args use options this DINO does not implement: {', '.join(unsupported)}")
    values = shared_original_fields(args, _ORIGINAL_DEFAULTS, num_labels)
    values.update({
        "backbone_out_indices": [int(index) + 1 for index in _arg(args, "return_interm_indices", [1, 2, 3])],
        "dilation": bool(_arg(args, "dilation", False)),
        "num_feature_levels": int(_arg(args, "num_feature_levels", 4)),
        "activation_function": _arg(args, "transformer_activation", "relu"),
        "position_embedding_temperature": float(_arg(args, "pe_temperatureH", 20)),
        "dec_pred_class_embed_share": bool(_arg(args, "dec_pred_class_embed_share", True)),
        "dec_pred_bbox_embed_share": bool(_arg(args, "dec_pred_bbox_embed_share", True)),
        "two_stage_class_embed_share": bool(_arg(args, "two_stage_class_embed_share", False)),
        "two_stage_bbox_embed_share": bool(_arg(args, "two_stage_bbox_embed_share", False)),
        "dn_number": int(_arg(args, "dn_number", 100)) if _arg(args, "use_dn", True) else 0,
        "dn_label_noise_ratio": float(_arg(args, "dn_label_noise_ratio", 0.5)),
        "dn_box_noise_scale": float(_arg(args, "dn_box_noise_scale", 0.4)),
        "dn_labelbook_size": int(_arg(args, "dn_labelbook_size", num_labels)),
        "class_loss_coefficient": float(_arg(args, "cls_loss_coef", 1.0)),
        "interm_loss_coefficient": float(_arg(args, "interm_loss_coef", 1.0)),
    })
    values.update(overrides)
    return DinoConfig(**values)
