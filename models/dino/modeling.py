"""``DinoModel`` and ``DinoForObjectDetection``: DINO as a builder over the query-group detector.

What is DINO's own here, over ``models.common.detector.QueryGroupDetector``:

- positions: sine with temperature 20 and no half-pixel offset;
- query selection: ``MixedQuerySelection`` (top-k proposals by max class, learned contents);
- the decoder's policies: ``BoxQueryPosition`` (conditional query positions from the current
  boxes), ``LookForwardTwice`` refinement (inverse-sigmoid eps 1e-3), a shared LayerNorm on every
  layer's output;
- contrastive denoising queries in training (the ``DenoisingGroup``, ``label_enc``);
- the loss (``DinoCriterion``): matching, auxiliary and intermediate (``_interm``) terms; the
  denoising group adds ``_dn``.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from detr_blocks.decoder import DeformableDecoder, DeformableDecoderOutput
from detr_blocks.encoder import DeformableEncoderOutput
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.position_embedding import SinePositionEmbedding
from detr_blocks.query_position import BoxQueryPosition
from detr_blocks.refinement import LookForwardTwice
from models.backbones import BackboneWithPositions, ConvEncoder, build_backbone_body
from models.common.deformable_transformer import DeformableTransformerModel, SelectedQueries, standard_parts
from models.common.denoising_group import DenoisingGroup
from models.common.family_detector import DetectorParts, FamilyDetector, checked_config
from models.common.key_rules import original_num_labels
from models.common.layers import box_head, class_head, decoder_layers
from models.common.multi_scale import MultiScaleFeatures
from models.common.pretrained import OriginalFormat
from models.common.pretrained_model import CheckpointFormat, PretrainedMixin
from models.common.query_groups import QueryGroup, QueryLayout
from models.dino import checkpoints
from models.dino.config import DinoConfig
from models.dino.criterion import DinoCriterion
from models.dino.outputs import DinoModelOutput, DinoObjectDetectionOutput
from models.dino.query_selection import MixedQuerySelection

BOX_EPS = 1e-3  # DINO's inverse_sigmoid clamps at 1e-3 (Deformable DETR: 1e-5)


def _decoder(config: DinoConfig, bbox_embed: nn.ModuleList) -> DeformableDecoder:
    """DINO's decoder: the shared layers with its three policies."""
    return DeformableDecoder(
        decoder_layers(config),
        bbox_embed=bbox_embed,
        refinement=LookForwardTwice(eps=BOX_EPS),
        query_position=BoxQueryPosition(config.d_model),
        intermediate_norm=nn.LayerNorm(config.d_model),
    )


def _denoising(config: DinoConfig) -> DenoisingGroup:
    """DINO's contrastive denoising group (present even with ``dn_number=0``: ``label_enc`` is in
    every DINO checkpoint)."""
    return DenoisingGroup(
        config.num_labels, config.label_book_size, config.d_model, dn_number=config.dn_number,
        label_noise_ratio=config.dn_label_noise_ratio, box_noise_scale=config.dn_box_noise_scale, eps=BOX_EPS,
    )


class DinoModel(PretrainedMixin, DeformableTransformerModel):
    """Backbone + deformable encoder + mixed query selection (+ denoising queries) + DINO's decoder.

    Args:
        config: the ``DinoConfig``.
        bbox_embed: the decoder's box heads (one per layer, possibly the same module), used for
            look-forward-twice refinement; given by ``DinoForObjectDetection``. None: fresh heads.
        enc_class_head, enc_box_head: the heads that score the encoder proposals (None: fresh).
        backbone_body: another backbone network (e.g. a narrower ResNet) instead of the config's;
            it must return a list of maps and carry ``channels``.
        query_selection: another query selection module.
        groups: the training-time query groups (default: the denoising group).

    Submodules: ``backbone``, ``input_proj``, ``level_embed``, ``encoder``, ``decoder``
    (``query_position``, ``intermediate_norm``, ``bbox_embed``), the denoising group's
    ``label_enc``, and the query selection's ``enc_output``, ``enc_output_norm``,
    ``enc_out_class_embed``, ``enc_out_bbox_embed``, ``tgt_embed`` (stored at the model's level).
    """

    checkpoint_format: CheckpointFormat  # set below the classes
    is_bare = True

    def __init__(
        self,
        config: DinoConfig,
        bbox_embed: nn.ModuleList | None = None,
        enc_class_head: nn.Module | None = None,
        enc_box_head: nn.Module | None = None,
        *,
        backbone_body: nn.Module | None = None,
        query_selection: nn.Module | None = None,
        groups: list[QueryGroup] | None = None,
    ) -> None:
        config = checked_config(self, config)
        if bbox_embed is None:
            _, bbox_embed, enc_class_head, enc_box_head = _heads(config)
        if len(bbox_embed) != config.decoder_layers:
            raise ValueError(f"bbox_embed must hold decoder_layers = {config.decoder_layers} heads, got {len(bbox_embed)}")
        if query_selection is None and (enc_class_head is None or enc_box_head is None):
            raise ValueError("enc_class_head and enc_box_head are needed for DINO's query selection")
        body = build_backbone_body(config) if backbone_body is None else backbone_body
        positions = SinePositionEmbedding(config.d_model // 2, temperature=config.position_embedding_temperature, normalize=True, offset=0.0)
        backbone = BackboneWithPositions(ConvEncoder(body), positions)
        super().__init__(
            backbone=backbone,
            **standard_parts(config, backbone),
            query_selection=query_selection or MixedQuerySelection(config.num_queries, config.d_model, enc_class_head, enc_box_head),
            decoder=_decoder(config, bbox_embed),
            output_class=DinoModelOutput,
            groups=[_denoising(config)] if groups is None else groups,
        )
        self.config = config

    @property
    def label_enc(self) -> nn.Module | None:
        """The denoising group's label embedding (``[label_book_size + 1, C]``), if it has one."""
        return next((group.label_enc for group in self.query_groups if isinstance(group, DenoisingGroup)), None)

    def output_fields(
        self, features: MultiScaleFeatures, encoded: DeformableEncoderOutput, queries: SelectedQueries, decoded: DeformableDecoderOutput, layout: QueryLayout
    ) -> dict[str, Any]:
        """The shared fields plus the selected proposals (``enc_topk_logits``, ``enc_topk_boxes``)."""
        fields = super().output_fields(features, encoded, queries, decoded, layout)
        fields.update(enc_topk_logits=queries.proposal_logits, enc_topk_boxes=queries.proposal_boxes)
        return fields


def _shared(first: nn.Module, count: int, shared: bool) -> nn.ModuleList:
    return nn.ModuleList([first] * count if shared else [first] + [copy.deepcopy(first) for _ in range(count - 1)])


def _heads(config: DinoConfig) -> tuple[nn.ModuleList, nn.ModuleList, nn.Module, nn.Module]:
    """(class heads, box heads, proposal class head, proposal box head): per-layer heads shared
    when ``dec_pred_*_embed_share``; the proposal heads are the first ones with
    ``two_stage_*_embed_share``, else copies."""
    first_class, first_box = class_head(config), box_head(config)
    class_embed = _shared(first_class, config.decoder_layers, config.dec_pred_class_embed_share)
    bbox_embed = _shared(first_box, config.decoder_layers, config.dec_pred_bbox_embed_share)
    enc_class = first_class if config.two_stage_class_embed_share else copy.deepcopy(first_class)
    enc_box = first_box if config.two_stage_bbox_embed_share else copy.deepcopy(first_box)
    return class_embed, bbox_embed, enc_class, enc_box


class DinoForObjectDetection(FamilyDetector):
    """DINO with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` / ``bbox_embed`` hold one head per decoder layer: the same module when
    ``dec_pred_*_embed_share`` (the authors' default), else one each. The encoder-proposal heads are
    the decoder's first ones with ``two_stage_*_embed_share``, else copies of their own.
    ``state_dict()`` lists each shared tensor once (``TiedStateDictMixin``), so ``transformers.Trainer``
    can save it with safetensors.

    Constructor: ``DinoForObjectDetection(config, *, backbone_body=None, query_selection=None,
    groups=None, criterion=None)`` (``models.common.family_detector``); the default criterion is
    ``DinoCriterion``.
    """

    box_eps = BOX_EPS
    detection_output = DinoObjectDetectionOutput

    def build_parts(
        self, config: DinoConfig, *, backbone_body: nn.Module | None, query_selection: nn.Module | None, groups: list[QueryGroup] | None
    ) -> DetectorParts:
        class_embed, bbox_embed, enc_class, enc_box = _heads(config)
        model = DinoModel(config, bbox_embed, enc_class, enc_box, backbone_body=backbone_body, query_selection=query_selection, groups=groups)
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost, focal_alpha=config.focal_alpha)
        return DetectorParts(model, class_embed, bbox_embed, DinoCriterion(config, matcher))

    def proposal_predictions(self, fields: dict[str, Any]) -> dict[str, Any]:
        """DINO supervises the *selected* proposals, class-aware (``interm_outputs``, terms ``_interm``)."""
        return {"interm_outputs": {"logits": fields["enc_topk_logits"], "pred_boxes": fields["enc_topk_boxes"]}}


CHECKPOINT_FORMAT = CheckpointFormat(
    config_class=DinoConfig,
    original=OriginalFormat(checkpoints.convert_original_state_dict, checkpoints.config_from_original_args, original_num_labels),
)
DinoModel.checkpoint_format = CHECKPOINT_FORMAT
DinoForObjectDetection.checkpoint_format = CHECKPOINT_FORMAT
