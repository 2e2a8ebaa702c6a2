"""``DeformableDetrConfig``: every hyper-parameter of a Deformable DETR detector.

The argument names and defaults are those of the Hugging Face ``DeformableDetrConfig``, so a
``config.json`` written by ``transformers`` loads here, and one written here loads there.
Keys this class does not know (``architectures``, ``transformers_version``, ...) are kept and
written back unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from models.common.config_base import HF_BASE_KEYS, DetectionConfig, check_bools, check_numbers, check_positive_ints

MODEL_TYPE = "deformable_detr"

POSITION_EMBEDDINGS = ("sine", "learned")

# Keys of the Hugging Face base config that describe text generation or other tasks; they are
# accepted (so any config.json loads) but not written back.
_IGNORED_BASE_KEYS = HF_BASE_KEYS

# Hugging Face attribute aliases: reading or writing the alias reads or writes the field.
ATTRIBUTE_MAP = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads"}

# Output switches every Hugging Face config carries; forward reads them when the call does not pass them.
OUTPUT_FLAGS = {"output_attentions": False, "output_hidden_states": False, "return_dict": True}


def default_backbone_kwargs(dilation: bool, num_feature_levels: int, num_channels: int) -> dict[str, Any]:
    """The timm ``backbone_kwargs`` that ``transformers`` fills in when none are given."""
    kwargs: dict[str, Any] = {"output_stride": 16} if dilation else {}
    kwargs["out_indices"] = [2, 3, 4] if num_feature_levels > 1 else [4]
    kwargs["in_chans"] = num_channels
    return kwargs


class DeformableDetrConfig(DetectionConfig):
    """Configuration of ``DeformableDetrModel`` / ``DeformableDetrForObjectDetection``.

    Defaults give the paper's Deformable DETR (ResNet-50, 4 levels, 6+6 layers, 300 queries).
    The variants are switched by ``num_feature_levels=1`` (single scale), ``dilation=True`` (DC5),
    ``with_box_refine=True`` (iterative box refinement) and ``two_stage=True`` (two-stage, which
    needs ``with_box_refine=True``).

    Args (all keyword, Hugging Face names and defaults):
        use_timm_backbone: build the backbone as ``timm`` would (``backbone_kwargs`` in timm's terms).
            ResNets are built with torchvision either way: their parameter names are the same.
        backbone_config: with ``use_timm_backbone=False``, the ``transformers`` ResNet
            (AutoBackbone) config as a dict (``model_type`` "resnet"; default: ResNet-50 with
            ``out_features=["stage4"]``, as in transformers). Standard ResNet widths only.
        backbone: backbone name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` (torchvision),
            or any ``timm`` model name when ``use_timm_backbone`` and timm is installed.
        use_pretrained_backbone: load ImageNet weights for the backbone (only from the local cache).
        backbone_kwargs: ``out_indices`` (stages 1-4 whose features are used), ``in_chans``,
            ``output_stride`` (16 = dilation); filled in from the other arguments when None.
        dilation: DC5, replace the stride of the last stage by dilation.
        num_channels: input image channels.
        num_queries: object queries (two-stage uses ``two_stage_num_proposals``).
        d_model: width of the transformer.
        encoder_layers, decoder_layers, encoder_attention_heads, decoder_attention_heads,
        encoder_ffn_dim, decoder_ffn_dim, encoder_n_points, decoder_n_points, num_feature_levels:
            transformer sizes.
        activation_function: one of ``ACTIVATIONS``.
        dropout, attention_dropout, activation_dropout: regularisation.
        encoder_layerdrop, max_position_embeddings, is_encoder_decoder, return_intermediate,
        mask_loss_coefficient, dice_loss_coefficient, eos_coefficient: kept and saved for
        compatibility; the detector does not use them (transformers' does not either).
        init_std, init_xavier_std: kept and saved; our fresh weights follow the paper's
            initialisation (Xavier, focal-loss prior for the class bias) instead.
        auxiliary_loss: add the losses of every decoder layer.
        position_embedding_type: ``"sine"`` or ``"learned"``.
        class_cost, bbox_cost, giou_cost: Hungarian matching weights.
        bbox_loss_coefficient, giou_loss_coefficient, focal_alpha: loss weights.
        class_loss_coefficient: the weight of ``loss_ce`` (not in ``transformers``, whose loss
            uses 1, the default here; the paper's code and H-Deformable-DETR use 2, and a
            checkpoint of theirs loads with their value).
        two_stage, two_stage_num_proposals, with_box_refine: variant switches.
        disable_custom_kernels: run the pure-PyTorch attention (for ONNX export).
        num_queries_one2many, k_one2many, lambda_one2many: H-Deformable-DETR's hybrid matching
            (not in ``transformers``): ``num_queries_one2many > 0`` adds, in training only, that
            many queries matched against every target repeated ``k_one2many`` times, their loss
            weighted by ``lambda_one2many`` (terms ``<name>_one2many``, λ included, as H-DETR
            reports them; ``k_one2many`` may be 0 only without the branch). Inference runs the
            ``num_queries`` one-to-one queries only. Defaults 0 (off), 6, 1.0 (the paper's k and λ).
        mixed_selection: two-stage content queries from a learned table (H-DETR's switch; DINO's
            mixed query selection). Needs ``two_stage``.
        look_forward_twice: box refinement records the undetached refined boxes, so a layer's box
            loss also trains the previous layer (H-DETR's and DINO's switch). Needs ``with_box_refine``.
        dn_number, dn_label_noise_ratio, dn_box_noise_scale: contrastive denoising queries in
            training (DN-Deformable-DETR, with DINO's contrastive scheme; ``dn_number=0``, the
            default, is no denoising). Needs ``two_stage`` (denoising queries are boxes; one-stage
            references are points). Defaults 0, 0.2, 0.4 (DN-DETR's noise).
        group_detr: Group-DETR's K: ``K - 1`` extra groups of ``num_queries`` learned queries in
            training, each matched one-to-one on its own, masked apart (terms ``<name>_group<g>``).
            Default 1 (off). One-stage only.
        num_labels / id2label / label2id: classes of the detection head (default 2, like transformers).
        output_attentions, output_hidden_states, return_dict: what ``forward`` returns when the
            call does not say (defaults False, False, True); ``use_return_dict`` reads ``return_dict``.
        hidden_size, num_attention_heads: aliases of ``d_model`` and ``encoder_attention_heads``
            (as keyword arguments, and as attributes to read and write); an alias given as a
            keyword wins over the field, as in ``transformers``.
    """

    model_type = MODEL_TYPE
    attribute_map = ATTRIBUTE_MAP

    def __init__(
        self,
        use_timm_backbone: bool = True,
        backbone_config: dict | None = None,
        num_channels: int = 3,
        num_queries: int = 300,
        max_position_embeddings: int = 1024,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        encoder_attention_heads: int = 8,
        decoder_layers: int = 6,
        decoder_ffn_dim: int = 1024,
        decoder_attention_heads: int = 8,
        encoder_layerdrop: float = 0.0,
        is_encoder_decoder: bool = True,
        activation_function: str = "relu",
        d_model: int = 256,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        init_std: float = 0.02,
        init_xavier_std: float = 1.0,
        return_intermediate: bool = True,
        auxiliary_loss: bool = False,
        position_embedding_type: str = "sine",
        backbone: str | None = "resnet50",
        use_pretrained_backbone: bool = True,
        backbone_kwargs: dict | None = None,
        dilation: bool = False,
        num_feature_levels: int = 4,
        encoder_n_points: int = 4,
        decoder_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        with_box_refine: bool = False,
        class_cost: float = 1,
        bbox_cost: float = 5,
        giou_cost: float = 2,
        mask_loss_coefficient: float = 1,
        dice_loss_coefficient: float = 1,
        bbox_loss_coefficient: float = 5,
        giou_loss_coefficient: float = 2,
        class_loss_coefficient: float = 1,
        eos_coefficient: float = 0.1,
        focal_alpha: float = 0.25,
        disable_custom_kernels: bool = False,
        num_queries_one2many: int = 0,
        k_one2many: int = 6,
        lambda_one2many: float = 1.0,
        mixed_selection: bool = False,
        look_forward_twice: bool = False,
        dn_number: int = 0,
        dn_label_noise_ratio: float = 0.2,
        dn_box_noise_scale: float = 0.4,
        group_detr: int = 1,
        num_labels: int | None = None,
        id2label: dict | None = None,
        label2id: dict | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        if "hidden_size" in kwargs:
            d_model = kwargs.pop("hidden_size")
        if "num_attention_heads" in kwargs:
            encoder_attention_heads = kwargs.pop("num_attention_heads")
        if not use_timm_backbone and backbone in (None, "resnet50") and backbone_config is None:
            # transformers' default for its own (AutoBackbone) ResNet: a ResNet-50, last stage only
            backbone, backbone_config = None, {"model_type": "resnet", "out_features": ["stage4"]}
        if hasattr(backbone_config, "to_dict"):  # a transformers config object
            backbone_config = backbone_config.to_dict()
        if use_timm_backbone and backbone_kwargs is None:
            # what transformers fills in, so both libraries read the same dict
            backbone_kwargs = default_backbone_kwargs(dilation, num_feature_levels, num_channels)
        self.use_timm_backbone = use_timm_backbone
        self.backbone_config = copy.deepcopy(backbone_config)
        self.num_channels = num_channels
        self.num_queries = num_queries
        self.max_position_embeddings = max_position_embeddings
        self.d_model = d_model
        self.encoder_ffn_dim = encoder_ffn_dim
        self.encoder_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.decoder_layers = decoder_layers
        self.decoder_attention_heads = decoder_attention_heads
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.init_std = init_std
        self.init_xavier_std = init_xavier_std
        self.encoder_layerdrop = encoder_layerdrop
        self.is_encoder_decoder = is_encoder_decoder
        self.return_intermediate = return_intermediate
        self.auxiliary_loss = auxiliary_loss
        self.position_embedding_type = position_embedding_type
        self.backbone = backbone
        self.use_pretrained_backbone = use_pretrained_backbone
        self.backbone_kwargs = copy.deepcopy(backbone_kwargs)
        self.dilation = dilation
        self.num_feature_levels = num_feature_levels
        self.encoder_n_points = encoder_n_points
        self.decoder_n_points = decoder_n_points
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.with_box_refine = with_box_refine
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost
        self.mask_loss_coefficient = mask_loss_coefficient
        self.dice_loss_coefficient = dice_loss_coefficient
        self.bbox_loss_coefficient = bbox_loss_coefficient
        self.giou_loss_coefficient = giou_loss_coefficient
        self.class_loss_coefficient = class_loss_coefficient
        self.eos_coefficient = eos_coefficient
        self.focal_alpha = focal_alpha
        self.disable_custom_kernels = disable_custom_kernels
        self.num_queries_one2many = num_queries_one2many
        self.k_one2many = k_one2many
        self.lambda_one2many = lambda_one2many
        self.mixed_selection = mixed_selection
        self.look_forward_twice = look_forward_twice
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.group_detr = group_detr
        self.output_attentions = output_attentions
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        self._set_labels(2 if num_labels is None and id2label is None else num_labels, id2label, label2id)  # 2: transformers' default
        self.extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in ("model_type", "use_return_dict"):
                continue
            if key in _IGNORED_BASE_KEYS:
                continue
            self.extra[key] = copy.deepcopy(value)
        self.validate()

    def _default_backbone_kwargs(self) -> dict[str, Any]:
        return default_backbone_kwargs(self.dilation, self.num_feature_levels, self.num_channels)

    @property
    def hidden_size(self) -> int:
        """Alias of ``d_model`` (read and write)."""
        return self.d_model

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        self.d_model = value

    @property
    def num_attention_heads(self) -> int:
        """Alias of ``encoder_attention_heads`` (read and write)."""
        return self.encoder_attention_heads

    @num_attention_heads.setter
    def num_attention_heads(self, value: int) -> None:
        self.encoder_attention_heads = value

    @property
    def use_return_dict(self) -> bool:
        """Whether ``forward`` returns an output object by default (``return_dict``)."""
        return bool(self.return_dict)

    @property
    def num_backbone_levels(self) -> int:
        """How many feature maps the backbone returns (the rest come from strided convolutions)."""
        return len(self.out_indices)

    @property
    def out_indices(self) -> tuple[int, ...]:
        """ResNet stages (1-4) whose outputs feed the transformer."""
        if self.backbone_config is not None:
            if self.backbone_config.get("out_indices"):
                return tuple(int(index) for index in self.backbone_config["out_indices"])
            names = self.backbone_config.get("out_features") or ["stage4"]
            return tuple(int(str(name).replace("stage", "")) for name in names if str(name) != "stem")
        kwargs = self.backbone_kwargs or {}
        if "out_indices" in kwargs:
            return tuple(int(index) for index in kwargs["out_indices"])
        return (2, 3, 4) if self.num_feature_levels > 1 else (4,)

    # ------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the argument when a value or a combination is invalid."""
        self.validate_common()
        check_positive_ints(self, ("two_stage_num_proposals", "max_position_embeddings", "group_detr"))
        check_positive_ints(self, ("num_queries_one2many", "k_one2many", "dn_number"), minimum=0)
        if self.num_queries_one2many > 0 and self.k_one2many < 1:
            raise ValueError(f"k_one2many must be >= 1 when num_queries_one2many > 0 (each target is repeated k times), got {self.k_one2many!r}")
        check_numbers(self, ("encoder_layerdrop", "dn_label_noise_ratio"), 0.0, 1.0)
        check_numbers(self, ("init_std", "init_xavier_std", "mask_loss_coefficient", "dice_loss_coefficient", "eos_coefficient",
                             "lambda_one2many", "dn_box_noise_scale", "class_loss_coefficient"))
        check_bools(self, ("use_timm_backbone", "two_stage", "with_box_refine", "mixed_selection", "look_forward_twice"))
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding_type must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding_type!r}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage=True needs with_box_refine=True (the paper's two-stage model refines boxes)")
        if self.mixed_selection and not self.two_stage:
            raise ValueError("mixed_selection=True needs two_stage=True (it mixes learned contents with proposal positions)")
        if self.look_forward_twice and not self.with_box_refine:
            raise ValueError("look_forward_twice=True needs with_box_refine=True (it changes how refined boxes are recorded)")
        if self.dn_number > 0 and not self.two_stage:
            raise ValueError("dn_number > 0 needs two_stage=True: denoising queries are boxes, and one-stage Deformable DETR's references are points")
        if self.group_detr > 1 and self.two_stage:
            raise ValueError("group_detr > 1 needs two_stage=False: Group-DETR's extra groups are learned queries")
        if self.backbone is not None and self.backbone_config is not None:
            raise ValueError("give either backbone or backbone_config, not both")
        if self.backbone is None and self.backbone_config is None:
            raise ValueError("backbone (e.g. 'resnet50') is required when backbone_config is None")
        if self.backbone_config is not None and self.use_timm_backbone:
            raise ValueError("backbone_config cannot be combined with use_timm_backbone=True")
        if self.backbone_config is not None and self.backbone_kwargs:
            raise ValueError("give either backbone_kwargs or backbone_config, not both")
        if self.backbone_kwargs is not None and not isinstance(self.backbone_kwargs, dict):
            raise ValueError(f"backbone_kwargs must be a dict or None, got {type(self.backbone_kwargs).__name__}")
        if self.backbone_config is not None and not isinstance(self.backbone_config, dict):
            raise ValueError(f"backbone_config must be a dict or None, got {type(self.backbone_config).__name__}")
        indices = self.out_indices
        if not indices or any(index not in (1, 2, 3, 4) for index in indices) or list(indices) != sorted(set(indices)):
            raise ValueError(f"backbone_kwargs['out_indices'] must be increasing stage numbers in 1..4, got {list(indices)}")
        if len(indices) > self.num_feature_levels:
            raise ValueError(
                f"num_feature_levels ({self.num_feature_levels}) must be at least the number of backbone outputs "
                f"(out_indices {list(indices)})"
            )

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names ``from_pretrained`` may override: the arguments, their aliases, the base keys."""
        import inspect

        names = {name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "kwargs")}
        return frozenset(names | set(ATTRIBUTE_MAP) | set(_IGNORED_BASE_KEYS))

    @classmethod
    def from_transformers(cls, config: Any) -> "DeformableDetrConfig":
        """Convert a ``transformers.DeformableDetrConfig`` (or return ours unchanged).

        Raises ``TypeError`` naming the type for anything else (another model type included).
        """
        if isinstance(config, DeformableDetrConfig):
            return config
        model_type = getattr(config, "model_type", None)
        if not hasattr(config, "to_dict") or model_type != MODEL_TYPE:
            raise TypeError(
                f"config must be a models.DeformableDetrConfig or a transformers DeformableDetrConfig, got "
                f"{type(config).__module__}.{type(config).__name__} (model_type {model_type!r})"
            )
        data = {key: value for key, value in config.to_dict().items() if key not in ("dtype", "torch_dtype", "transformers_version")}
        return cls.from_dict(data)

    def copy(self, **overrides: Any) -> "DeformableDetrConfig":
        """A copy with some fields replaced (validated again)."""
        data = self.to_dict()
        if "backbone_kwargs" not in overrides and self.use_timm_backbone and self.backbone_kwargs == self._default_backbone_kwargs():
            data["backbone_kwargs"] = None  # recomputed from the new levels / dilation / channels
        if "num_labels" in overrides and "id2label" not in overrides:
            data.pop("id2label")
            data.pop("label2id")
        return type(self).from_dict(data, **overrides)
