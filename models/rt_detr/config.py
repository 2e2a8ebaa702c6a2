"""``RTDetrConfig``: RT-DETR's architecture and training hyper-parameters, with ``transformers``'
argument names and defaults (``transformers.RTDetrConfig``, 4.57.6), so its ``config.json`` files
read here and ours read there.

Defaults describe RT-DETR R50-vd (``PekingU/rtdetr_r50vd``): a ResNet-50-vd backbone (stages 2-4),
a hybrid encoder of width 256 (one AIFI layer on the coarsest map, CCFM with SiLU), 300 queries, 6
decoder layers, 100 denoising queries, the varifocal loss.
"""

from __future__ import annotations

import copy
from typing import Any

from detr_blocks.activation import ACTIVATIONS
from models.common.config_base import HF_BASE_KEYS, DetectionConfig, check_bools, check_numbers, check_positive_ints

MODEL_TYPE = "rt_detr"
BACKBONE_MODEL_TYPE = "rt_detr_resnet"

# transformers' default backbone: ResNet-50-vd, stages 2-4 (RTDetrResNetConfig's fields)
DEFAULT_BACKBONE: dict[str, Any] = {
    "model_type": BACKBONE_MODEL_TYPE,
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
    "out_features": ["stage2", "stage3", "stage4"],
    "out_indices": [2, 3, 4],
    "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
}

# Options this assembly implements with one value only (each refused by name otherwise).
_ONLY = {"normalize_before": False, "use_timm_backbone": False, "backbone": None, "use_pretrained_backbone": False, "backbone_kwargs": None}
_WHY = {
    "normalize_before": "the published checkpoints are post-norm (transformers' pre-norm variant also differs from the authors')",
    "use_timm_backbone": "RT-DETR's backbone is the ResNet-vd of backbone_config",
    "backbone": "give the ResNet-vd as backbone_config (a dict of transformers' RTDetrResNetConfig fields)",
    "use_pretrained_backbone": "nothing is downloaded at run time; load a checkpoint with from_pretrained",
    "backbone_kwargs": "the ResNet-vd is described by backbone_config",
}


def backbone_config_dict(backbone_config: Any) -> dict[str, Any]:
    """``backbone_config`` (None, a dict, or a ``transformers`` ``RTDetrResNetConfig``) as a dict of
    ``RTDetrResNetConfig`` fields, defaults filled in (R50-vd)."""
    if backbone_config is None:
        return copy.deepcopy(DEFAULT_BACKBONE)
    if hasattr(backbone_config, "to_dict"):
        backbone_config = backbone_config.to_dict()
    if not isinstance(backbone_config, dict):
        raise ValueError(f"backbone_config must be a dict of RTDetrResNetConfig fields or None, got {type(backbone_config).__name__}")
    data = {**copy.deepcopy(DEFAULT_BACKBONE), **copy.deepcopy(backbone_config)}
    if "out_indices" not in backbone_config and "out_features" in backbone_config:
        data["out_indices"] = [int(str(name).replace("stage", "")) for name in backbone_config["out_features"]]
    data["out_features"] = [f"stage{index}" for index in data["out_indices"]]
    data["stage_names"] = ["stem"] + [f"stage{index}" for index in range(1, len(data["depths"]) + 1)]
    return data


class RTDetrConfig(DetectionConfig):
    """Configuration of ``RTDetrModel`` / ``RTDetrForObjectDetection``; every argument is
    ``transformers.RTDetrConfig``'s, with its default.

    Backbone: ``backbone_config`` (``RTDetrResNetConfig`` fields: ``depths``, ``layer_type``,
    ``hidden_sizes``, ``embedding_size``, ``out_indices``, ...; default R50-vd),
    ``freeze_backbone_batch_norms``, ``batch_norm_eps``. ``backbone``, ``use_timm_backbone``,
    ``use_pretrained_backbone``, ``backbone_kwargs`` exist for file compatibility and accept only
    their defaults.

    Hybrid encoder: ``encoder_hidden_dim``, ``encoder_in_channels`` (the backbone's output widths),
    ``feat_strides``, ``encoder_layers`` (AIFI layers), ``encoder_ffn_dim``,
    ``encoder_attention_heads``, ``encode_proj_layers`` (levels AIFI runs on),
    ``positional_encoding_temperature``, ``encoder_activation_function`` (AIFI),
    ``activation_function`` (CCFM), ``hidden_expansion``, ``eval_size`` (precomputes the sin-cos
    table; results do not depend on it), ``normalize_before`` (False only).

    Decoder: ``d_model``, ``num_queries``, ``decoder_in_channels``, ``decoder_ffn_dim``,
    ``num_feature_levels``, ``decoder_n_points``, ``decoder_layers``, ``decoder_attention_heads``,
    ``decoder_activation_function``, ``dropout``, ``attention_dropout``, ``activation_dropout``,
    ``layer_norm_eps``, ``learn_initial_query`` (learned content queries instead of the selected
    encoder features), ``anchor_image_size`` (grid anchors precomputed for this input size),
    ``with_box_refine``, ``disable_custom_kernels`` (pure-PyTorch attention).

    Denoising: ``num_denoising`` (0 = off), ``label_noise_ratio``, ``box_noise_scale``.

    Loss: ``matcher_alpha``, ``matcher_gamma``, ``matcher_class_cost``, ``matcher_bbox_cost``,
    ``matcher_giou_cost``, ``use_focal_loss`` (post-processing scores), ``auxiliary_loss``,
    ``focal_loss_alpha``, ``focal_loss_gamma`` (varifocal), ``weight_loss_vfl``,
    ``weight_loss_bbox``, ``weight_loss_giou``, ``eos_coefficient``. Init: ``initializer_range``,
    ``initializer_bias_prior_prob``.

    Classes: ``num_labels`` / ``id2label`` / ``label2id`` (default 2, like ``transformers``).
    Outputs: ``output_attentions``, ``output_hidden_states``, ``return_dict``.
    """

    model_type = MODEL_TYPE

    def __init__(  # transformers' order, grouped by concern
        self,
        initializer_range: float = 0.01, initializer_bias_prior_prob: float | None = None, layer_norm_eps: float = 1e-5, batch_norm_eps: float = 1e-5,
        backbone_config: Any = None, backbone: str | None = None, use_pretrained_backbone: bool = False, use_timm_backbone: bool = False,
        freeze_backbone_batch_norms: bool = True, backbone_kwargs: dict | None = None,
        encoder_hidden_dim: int = 256, encoder_in_channels: list[int] = (512, 1024, 2048), feat_strides: list[int] = (8, 16, 32),
        encoder_layers: int = 1, encoder_ffn_dim: int = 1024, encoder_attention_heads: int = 8,
        dropout: float = 0.0, activation_dropout: float = 0.0, encode_proj_layers: list[int] = (2,), positional_encoding_temperature: float = 10000,
        encoder_activation_function: str = "gelu",
        activation_function: str = "silu", eval_size: list[int] | None = None, normalize_before: bool = False, hidden_expansion: float = 1.0,
        d_model: int = 256, num_queries: int = 300,
        decoder_in_channels: list[int] = (256, 256, 256), decoder_ffn_dim: int = 1024, num_feature_levels: int = 3, decoder_n_points: int = 4,
        decoder_layers: int = 6,
        decoder_attention_heads: int = 8, decoder_activation_function: str = "relu", attention_dropout: float = 0.0, num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0, learn_initial_query: bool = False, anchor_image_size: list[int] | None = None,
        disable_custom_kernels: bool = True, with_box_refine: bool = True, is_encoder_decoder: bool = True,
        matcher_alpha: float = 0.25, matcher_gamma: float = 2.0, matcher_class_cost: float = 2.0, matcher_bbox_cost: float = 5.0,
        matcher_giou_cost: float = 2.0, use_focal_loss: bool = True, auxiliary_loss: bool = True,
        focal_loss_alpha: float = 0.75, focal_loss_gamma: float = 2.0, weight_loss_vfl: float = 1.0, weight_loss_bbox: float = 5.0,
        weight_loss_giou: float = 2.0, eos_coefficient: float = 1e-4,
        num_labels: int | None = None, id2label: dict | None = None, label2id: dict | None = None, output_attentions: bool = False,
        output_hidden_states: bool = False, return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        given = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "num_labels", "id2label", "label2id", "__class__")}
        given["backbone_config"] = backbone_config_dict(backbone_config)
        for name, value in given.items():  # tuples (the list defaults) stored as lists, as JSON reads them back
            setattr(self, name, list(value) if isinstance(value, tuple) else copy.deepcopy(value))
        unknown = {key: value for key, value in kwargs.items() if key not in HF_BASE_KEYS | {"use_return_dict", "dtype"}}
        self._finish(2 if num_labels is None and id2label is None else num_labels, id2label, label2id, unknown)

    @property
    def use_return_dict(self) -> bool:
        """Whether ``forward`` returns an output object by default (``return_dict``)."""
        return bool(self.return_dict)

    @property
    def hidden_size(self) -> int:
        """``d_model`` (``transformers``' ``attribute_map``)."""
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        """``encoder_attention_heads`` (``transformers``' ``attribute_map``)."""
        return self.encoder_attention_heads

    @property
    def out_indices(self) -> tuple[int, ...]:
        """The ResNet-vd stages (1-4) whose outputs feed the hybrid encoder."""
        return tuple(int(index) for index in self.backbone_config["out_indices"])

    @property
    def backbone_channels(self) -> list[int]:
        """The widths of those outputs (``hidden_sizes`` of the stages)."""
        return [int(self.backbone_config["hidden_sizes"][index - 1]) for index in self.out_indices]

    # ------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the argument when a value or a combination is invalid."""
        for name, value in _ONLY.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name} must be {value!r} in this RT-DETR ({_WHY[name]}), got {getattr(self, name)!r}")
        check_positive_ints(self, ("encoder_hidden_dim", "encoder_ffn_dim", "encoder_attention_heads", "d_model", "num_queries",
                                   "decoder_ffn_dim", "num_feature_levels", "decoder_n_points", "decoder_layers", "decoder_attention_heads"))
        check_positive_ints(self, ("encoder_layers", "num_denoising"), minimum=0)
        check_numbers(self, ("dropout", "activation_dropout", "attention_dropout", "label_noise_ratio", "matcher_alpha", "focal_loss_alpha"), 0.0, 1.0)
        check_numbers(self, ("box_noise_scale", "matcher_gamma", "matcher_class_cost", "matcher_bbox_cost", "matcher_giou_cost", "focal_loss_gamma",
                             "weight_loss_vfl", "weight_loss_bbox", "weight_loss_giou", "eos_coefficient", "initializer_range"))
        for name in ("layer_norm_eps", "batch_norm_eps", "positional_encoding_temperature", "hidden_expansion"):
            check_numbers(self, (name,), 1e-12)
        if self.initializer_bias_prior_prob is not None:
            check_numbers(self, ("initializer_bias_prior_prob",), 1e-12, 1.0 - 1e-12)
        check_bools(self, ("freeze_backbone_batch_norms", "learn_initial_query", "disable_custom_kernels", "with_box_refine", "use_focal_loss",
                           "auxiliary_loss", "output_attentions", "output_hidden_states", "return_dict"))
        for name in ("encoder_activation_function", "activation_function", "decoder_activation_function"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}")
        for width, heads in (("d_model", "decoder_attention_heads"), ("encoder_hidden_dim", "encoder_attention_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width} ({getattr(self, width)}) must be divisible by {heads} ({getattr(self, heads)})")
        if self.encoder_hidden_dim % 4:
            raise ValueError(f"encoder_hidden_dim must be a multiple of 4 (the 2-D sin-cos table has four blocks), got {self.encoder_hidden_dim}")
        self._validate_backbone()
        self._validate_levels()
        for name in ("anchor_image_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
                raise ValueError(f"{name} must be None or [height, width] positive ints, got {value!r}")

    def _validate_backbone(self) -> None:
        fields = self.backbone_config
        if fields.get("model_type") != BACKBONE_MODEL_TYPE:
            raise ValueError(f"backbone_config must describe an {BACKBONE_MODEL_TYPE} (model_type), got {fields.get('model_type')!r}")
        if fields.get("layer_type") not in ("basic", "bottleneck"):
            raise ValueError(f"backbone_config['layer_type'] must be 'basic' or 'bottleneck', got {fields.get('layer_type')!r}")
        if fields.get("hidden_act") != "relu":
            raise ValueError(f"backbone_config['hidden_act'] must be 'relu' (ResNet-vd), got {fields.get('hidden_act')!r}")
        depths, widths = fields.get("depths"), fields.get("hidden_sizes")
        if not isinstance(depths, list) or not isinstance(widths, list) or len(depths) != len(widths) or not depths:
            raise ValueError(f"backbone_config['depths'] and ['hidden_sizes'] must be lists of one entry per stage, got {depths!r} and {widths!r}")
        indices = list(self.out_indices)
        if not indices or indices != sorted(set(indices)) or indices[0] < 1 or indices[-1] > len(depths):
            raise ValueError(f"backbone_config['out_indices'] must be increasing stage numbers in 1..{len(depths)}, got {indices}")
        if fields.get("num_channels", 3) < 1:
            raise ValueError(f"backbone_config['num_channels'] must be positive, got {fields.get('num_channels')!r}")

    def _validate_levels(self) -> None:
        levels = len(self.encoder_in_channels)
        if self.encoder_in_channels != self.backbone_channels:
            raise ValueError(
                f"encoder_in_channels must be the backbone's output widths {self.backbone_channels} "
                f"(backbone_config hidden_sizes at out_indices {list(self.out_indices)}), got {self.encoder_in_channels}"
            )
        if len(self.feat_strides) != levels:
            raise ValueError(f"feat_strides must give one stride per encoder level ({levels}), got {self.feat_strides}")
        if levels < 2:
            raise ValueError(f"the hybrid encoder fuses at least 2 levels; backbone out_indices give {levels}")
        projections = self.encode_proj_layers
        if len(set(projections)) != len(projections) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < levels for i in projections):
            raise ValueError(f"encode_proj_layers must be distinct level indices in [0, {levels}), got {projections}")
        if self.encoder_layers > 0 and not projections:
            raise ValueError("encode_proj_layers must name at least one level when encoder_layers > 0")
        if len(self.decoder_in_channels) != levels or any(width != self.encoder_hidden_dim for width in self.decoder_in_channels):
            raise ValueError(
                f"decoder_in_channels must be encoder_hidden_dim ({self.encoder_hidden_dim}) for each of the {levels} "
                f"hybrid encoder outputs, got {self.decoder_in_channels}"
            )
        if self.num_feature_levels < levels:
            raise ValueError(f"num_feature_levels ({self.num_feature_levels}) must be at least the encoder's levels ({levels})")
