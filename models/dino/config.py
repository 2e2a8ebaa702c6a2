"""``DinoConfig``: DINO's architecture and training hyper-parameters.

Defaults are the authors' ``DINO_4scale`` configuration (IDEA-Research/DINO): ResNet-50 stages 2-4
plus one strided level, 900 queries, 6 + 6 layers, d_model 256, FFN 2048, dropout 0, 4 points,
sine positions with temperature 20, contrastive denoising with 100 queries, label noise 0.5, box
noise 0.4, loss weights class 1 / L1 5 / GIoU 2, matcher costs 2 / 5 / 2, focal alpha 0.25, shared
decoder heads and separate two-stage heads, 91 classes (COCO ids).
"""

from __future__ import annotations

from typing import Any

from models.common.config_base import DetectionConfig, check_bools, check_numbers, check_positive_ints

MODEL_TYPE = "dino"


class DinoConfig(DetectionConfig):
    """Configuration of ``DinoModel`` / ``DinoForObjectDetection`` (all arguments keyword).

    Backbone: ``backbone`` (resnet18/34/50/101 from torchvision, or a timm name),
    ``backbone_out_indices`` (ResNet stages feeding the transformer: ``[2, 3, 4]`` for 4 scales,
    ``[1, 2, 3, 4]`` for 5), ``dilation``, ``num_channels``, ``use_pretrained_backbone`` (ImageNet
    weights from the local cache only; default False so nothing is looked for).

    Transformer: ``d_model``, ``num_queries``, ``num_feature_levels`` (backbone levels + strided
    extra levels), ``encoder_layers``, ``decoder_layers``, ``encoder_attention_heads``,
    ``decoder_attention_heads``, ``encoder_ffn_dim``, ``decoder_ffn_dim``, ``encoder_n_points``,
    ``decoder_n_points``, ``dropout``, ``attention_dropout``, ``activation_dropout``,
    ``activation_function``, ``position_embedding_temperature`` (20 in DINO; 10000 in Deformable
    DETR), ``disable_custom_kernels`` (pure-PyTorch attention).

    Heads: ``dec_pred_class_embed_share`` / ``dec_pred_bbox_embed_share`` (one head for every
    decoder layer), ``two_stage_class_embed_share`` / ``two_stage_bbox_embed_share`` (the
    encoder-proposal heads are the decoder's; needs the decoder's heads shared).

    Denoising: ``dn_number`` (denoising queries before grouping; 0 turns denoising off),
    ``dn_label_noise_ratio``, ``dn_box_noise_scale``, ``dn_labelbook_size`` (rows of the label
    embedding minus one; default ``num_labels``).

    Loss: ``class_cost``, ``bbox_cost``, ``giou_cost`` (matcher), ``class_loss_coefficient``,
    ``bbox_loss_coefficient``, ``giou_loss_coefficient``, ``interm_loss_coefficient`` (the
    encoder proposals' class term), ``focal_alpha``, ``auxiliary_loss``.

    Outputs: ``output_attentions``, ``output_hidden_states``, ``return_dict`` (what ``forward`` does
    when the call does not say).

    Classes: ``num_labels`` / ``id2label`` / ``label2id``.

    The fields every family has (backbone, transformer sizes, matching and loss weights, output
    switches) are declared once, in ``models.common.config_base.COMMON_FIELDS``, and take DINO's
    defaults from ``common_defaults``; the signature lists DINO's own fields.
    """

    model_type = MODEL_TYPE
    common_defaults: dict[str, Any] = {
        "backbone": "resnet50",
        "dilation": False,
        "num_channels": 3,
        "use_pretrained_backbone": False,
        "d_model": 256,
        "num_queries": 900,
        "num_feature_levels": 4,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048,
        "encoder_n_points": 4,
        "decoder_n_points": 4,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "disable_custom_kernels": False,
        "class_cost": 2.0,
        "bbox_cost": 5.0,
        "giou_cost": 2.0,
        "class_loss_coefficient": 1.0,
        "bbox_loss_coefficient": 5.0,
        "giou_loss_coefficient": 2.0,
        "focal_alpha": 0.25,
        "auxiliary_loss": True,
        "output_attentions": False,
        "output_hidden_states": False,
        "return_dict": True,
    }
    """The shared fields (``models.common.config_base.COMMON_FIELDS``) with DINO's defaults."""

    def __init__(
        self,
        backbone_out_indices: list[int] | tuple[int, ...] = (2, 3, 4),
        position_embedding_temperature: float = 20.0,
        dec_pred_class_embed_share: bool = True,
        dec_pred_bbox_embed_share: bool = True,
        two_stage_class_embed_share: bool = False,
        two_stage_bbox_embed_share: bool = False,
        dn_number: int = 100,
        dn_label_noise_ratio: float = 0.5,
        dn_box_noise_scale: float = 0.4,
        dn_labelbook_size: int | None = None,
        interm_loss_coefficient: float = 1.0,
        num_labels: int | None = None,
        id2label: dict | None = None,
        label2id: dict | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs = self._set_common(kwargs)
        self.backbone_out_indices = [int(index) for index in backbone_out_indices] if isinstance(backbone_out_indices, (list, tuple)) else backbone_out_indices
        self.position_embedding_temperature = position_embedding_temperature
        self.dec_pred_class_embed_share = dec_pred_class_embed_share
        self.dec_pred_bbox_embed_share = dec_pred_bbox_embed_share
        self.two_stage_class_embed_share = two_stage_class_embed_share
        self.two_stage_bbox_embed_share = two_stage_bbox_embed_share
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.interm_loss_coefficient = interm_loss_coefficient
        labels = 91 if num_labels is None and id2label is None else num_labels
        self.dn_labelbook_size = dn_labelbook_size
        self._finish(labels, id2label, label2id, kwargs)

    # The backbone builder (``models.backbones.build_backbone_body``) reads these.
    @property
    def out_indices(self) -> tuple[int, ...]:
        """ResNet stages (1-4) whose outputs feed the transformer."""
        return tuple(self.backbone_out_indices)

    @property
    def backbone_kwargs(self) -> dict[str, Any]:
        return {"out_indices": list(self.backbone_out_indices), "in_chans": self.num_channels}

    @property
    def backbone_config(self) -> None:
        return None

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def label_book_size(self) -> int:
        """Classes the denoising label embedding knows (``dn_labelbook_size`` or ``num_labels``)."""
        return self.num_labels if self.dn_labelbook_size is None else self.dn_labelbook_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the argument when a value or a combination is invalid."""
        self.validate_common()
        check_positive_ints(self, ("dn_number",), minimum=0)
        check_numbers(self, ("dn_label_noise_ratio",), 0.0, 1.0)
        check_numbers(self, ("class_loss_coefficient", "interm_loss_coefficient", "dn_box_noise_scale"))
        check_numbers(self, ("position_embedding_temperature",), 1e-6)
        check_bools(self, ("dec_pred_class_embed_share", "dec_pred_bbox_embed_share", "two_stage_class_embed_share", "two_stage_bbox_embed_share"))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a backbone name such as 'resnet50', got {self.backbone!r}")
        indices = self.backbone_out_indices
        if not isinstance(indices, list) or not indices or any(i not in (1, 2, 3, 4) for i in indices) or indices != sorted(set(indices)):
            raise ValueError(f"backbone_out_indices must be increasing ResNet stages in 1..4, got {indices!r}")
        if len(indices) > self.num_feature_levels:
            raise ValueError(f"num_feature_levels ({self.num_feature_levels}) must be at least len(backbone_out_indices) ({len(indices)})")
        if self.two_stage_class_embed_share and not self.dec_pred_class_embed_share:
            raise ValueError("two_stage_class_embed_share=True needs dec_pred_class_embed_share=True (the proposals share the decoder's one head)")
        if self.two_stage_bbox_embed_share and not self.dec_pred_bbox_embed_share:
            raise ValueError("two_stage_bbox_embed_share=True needs dec_pred_bbox_embed_share=True (the proposals share the decoder's one head)")
        if self.dn_labelbook_size is not None and (not isinstance(self.dn_labelbook_size, int) or self.dn_labelbook_size < self.num_labels):
            raise ValueError(f"dn_labelbook_size must be None or an int >= num_labels ({self.num_labels}), got {self.dn_labelbook_size!r}")
