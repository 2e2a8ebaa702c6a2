"""``DeformableDetrModel`` and ``DeformableDetrForObjectDetection``: Deformable DETR as a builder
over the query-group detector (``models.common.detector``), from ``detr_blocks`` and ``msda``.

What the config switches on, each as one injected module:

- the paper's variants: feature levels, DC5, box refinement (the decoder's refinement policy),
  two-stage (``TwoStageProposals`` as the query selection);
- H-Deformable-DETR: ``num_queries_one2many`` adds the hybrid one-to-many group,
  ``mixed_selection`` the learned two-stage contents, ``look_forward_twice`` the refinement policy;
- DN-Deformable-DETR: ``dn_number`` adds the denoising group;
- Group-DETR: ``group_detr`` adds ``K - 1`` extra one-to-one groups.

Parameter names are those of the Hugging Face models (``model.backbone.conv_encoder.model...``,
``model.input_proj``, ``model.level_embed``, ``model.encoder.layers...``, ``class_embed.N``,
``bbox_embed.N`` ...), so their checkpoints load unchanged and ``transformers`` loads ours.
"""

from __future__ import annotations

from torch import nn

from detr_blocks.decoder import DeformableDecoder
from detr_blocks.losses import SetCriterion
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.position_embedding import LearnedPositionEmbedding, SinePositionEmbedding
from detr_blocks.refinement import DetachedRefinement, LookForwardTwice, NoRefinement
from models.backbones import BackboneWithPositions, ConvEncoder, build_backbone_body
from models.common.deformable_transformer import DeformableTransformerModel, standard_parts
from models.common.denoising_group import DenoisingGroup
from models.common.family_detector import DetectorParts, FamilyDetector, checked_config
from models.common.key_rules import original_num_labels
from models.common.layers import box_head, class_head, decoder_layers
from models.common.pretrained import OriginalFormat
from models.common.pretrained_model import CheckpointFormat, PretrainedMixin
from models.common.query_groups import QueryGroup
from models.common.selected_group import SelectedQueriesGroup
from models.ddetr import checkpoints
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.outputs import DeformableDetrModelOutput, DeformableDetrObjectDetectionOutput
from models.ddetr.query_selection import LearnedQueries, TwoStageProposals

BOX_EPS = 1e-5  # inverse_sigmoid's clamp in the paper's code


def _backbone(config: DeformableDetrConfig, body: nn.Module | None) -> BackboneWithPositions:
    if config.position_embedding_type == "sine":
        position_embedding: nn.Module = SinePositionEmbedding(config.d_model // 2, normalize=True)
    else:
        position_embedding = LearnedPositionEmbedding(config.d_model // 2)
    return BackboneWithPositions(ConvEncoder(build_backbone_body(config) if body is None else body), position_embedding)


def _query_selection(config: DeformableDetrConfig) -> nn.Module:
    """Learned queries, or two-stage proposals; sized for the matching queries plus the rows the
    hybrid and Group-DETR groups take."""
    if config.two_stage:
        return TwoStageProposals(config.two_stage_num_proposals + config.num_queries_one2many, config.d_model, mixed_selection=config.mixed_selection)
    return LearnedQueries(config.num_queries * config.group_detr + config.num_queries_one2many, config.d_model)


def _groups(config: DeformableDetrConfig, selection: nn.Module) -> list[QueryGroup]:
    """The training-time query groups the config switches on."""
    groups: list[QueryGroup] = [SelectedQueriesGroup(f"group{index}", config.num_queries) for index in range(1, config.group_detr)]
    if config.num_queries_one2many:
        groups.append(SelectedQueriesGroup("one2many", config.num_queries_one2many, repeats=config.k_one2many, weight=config.lambda_one2many))
    if config.dn_number:
        if not hasattr(selection, "box_positions"):
            raise ValueError(f"dn_number > 0 needs a query selection with box_positions(box_logits) for the denoising queries' positions; {type(selection).__name__} has none")
        groups.append(
            DenoisingGroup(
                config.num_labels, config.num_labels, config.d_model, dn_number=config.dn_number,
                label_noise_ratio=config.dn_label_noise_ratio, box_noise_scale=config.dn_box_noise_scale,
                eps=BOX_EPS, box_position=selection.box_positions,
            )
        )
    return groups


def _refinement(config: DeformableDetrConfig) -> nn.Module:
    if not config.with_box_refine:
        return NoRefinement()
    return LookForwardTwice(eps=BOX_EPS) if config.look_forward_twice else DetachedRefinement(eps=BOX_EPS)


class DeformableDetrModel(PretrainedMixin, DeformableTransformerModel):
    """Backbone + deformable transformer, without detection heads, built from a config.

    The steps (``multi_scale_features`` → ``encode`` → ``select_queries`` → ``decode``) are those
    of ``models.common.deformable_transformer.DeformableTransformerModel``; the query selection is
    ``LearnedQueries`` or, with ``two_stage``, ``TwoStageProposals``.

    Args:
        config: the ``DeformableDetrConfig``.
        bbox_embed: the box heads the decoder uses for iterative refinement (and two-stage
            proposals); given by ``DeformableDetrForObjectDetection``. None: fresh heads when the
            config needs them (box refinement, two-stage), else none.
        class_embed: the class heads (two-stage uses the last one to score proposals).
        query_selection: another query selection module (default from the config).
        backbone_body: another backbone network (must return a list of maps and carry ``channels``).
        groups: the training-time query groups (default: those the config switches on).

    Submodules (Hugging Face names): ``backbone`` (``conv_encoder.model``, ``position_embedding``),
    ``input_proj``, ``level_embed``, ``query_position_embeddings`` (one-stage),
    ``reference_points`` (one-stage), ``encoder``, ``decoder``, ``enc_output``,
    ``enc_output_norm``, ``pos_trans``, ``pos_trans_norm`` (two-stage).
    """

    checkpoint_format: CheckpointFormat  # set below the classes
    is_bare = True

    def __init__(
        self,
        config: DeformableDetrConfig,
        bbox_embed: nn.ModuleList | None = None,
        class_embed: nn.ModuleList | None = None,
        *,
        query_selection: nn.Module | None = None,
        backbone_body: nn.Module | None = None,
        groups: list[QueryGroup] | None = None,
    ) -> None:
        config = checked_config(self, config)
        if bbox_embed is None and class_embed is None and (config.two_stage or config.with_box_refine):
            class_embed, bbox_embed = _heads(config)
        if config.two_stage and (bbox_embed is None or class_embed is None or len(bbox_embed) <= config.decoder_layers):
            raise ValueError(f"two_stage needs bbox_embed and class_embed with decoder_layers + 1 = {config.decoder_layers + 1} heads (the last scores proposals)")
        backbone = _backbone(config, backbone_body)
        query_selection = _query_selection(config) if query_selection is None else query_selection
        decoder = DeformableDecoder(
            decoder_layers(config),
            bbox_embed=bbox_embed if config.with_box_refine else None,
            class_embed=class_embed if config.two_stage else None,
            refinement=_refinement(config),
        )
        super().__init__(
            backbone=backbone,
            **standard_parts(config, backbone),
            query_selection=query_selection,
            decoder=decoder,
            output_class=DeformableDetrModelOutput,
            groups=_groups(config, query_selection) if groups is None else groups,
        )
        self.config = config


def _heads(config: DeformableDetrConfig) -> tuple[nn.ModuleList, nn.ModuleList]:
    """(class heads, box heads): one per decoder layer (+ one for two-stage proposals); with box
    refinement each layer has its own, else all entries are one shared head (as the paper)."""
    num_heads = config.decoder_layers + (1 if config.two_stage else 0)
    if config.with_box_refine:
        class_heads = [class_head(config) for _ in range(num_heads)]
        box_heads = [box_head(config) for _ in range(num_heads)]
        nn.init.constant_(box_heads[0].layers[-1].bias[2:], 0.0 if config.two_stage else -2.0)
    else:
        shared_class, shared_box = class_head(config), box_head(config)
        nn.init.constant_(shared_box.layers[-1].bias[2:], -2.0)
        class_heads, box_heads = [shared_class] * num_heads, [shared_box] * num_heads
    return nn.ModuleList(class_heads), nn.ModuleList(box_heads)


def _criterion(config: DeformableDetrConfig) -> SetCriterion:
    matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost, focal_alpha=config.focal_alpha)
    weights = {"loss_ce": float(config.class_loss_coefficient), "loss_bbox": float(config.bbox_loss_coefficient), "loss_giou": float(config.giou_loss_coefficient)}
    return SetCriterion(config.num_labels, matcher, weight_dict=weights, focal_alpha=config.focal_alpha)


class DeformableDetrForObjectDetection(FamilyDetector):
    """Deformable DETR with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` and ``bbox_embed`` hold one head per decoder layer (plus one for two-stage
    proposals). Without box refinement all entries are the same module (one shared head, as in
    the paper); with refinement each layer has its own, and the decoder uses them to refine.
    The loss weights are ``class_loss_coefficient`` (default 1, as ``transformers``),
    ``bbox_loss_coefficient`` and ``giou_loss_coefficient``, the same for every ``_i`` auxiliary
    term; two-stage adds the paper's encoder-proposal terms (suffix ``_enc``), which
    ``transformers`` leaves out; the groups add theirs (``_one2many``, ``_dn``, ``_group<g>``).

    ``state_dict()`` lists each shared tensor once (the layout ``save_pretrained`` writes), so
    ``transformers.Trainer`` can save it with safetensors; ``load_state_dict`` accepts it (see
    ``models.common.pretrained.TiedStateDictMixin``).

    Constructor: ``DeformableDetrForObjectDetection(config, *, backbone_body=None,
    query_selection=None, groups=None, criterion=None)`` (``models.common.family_detector``).
    """

    box_eps = BOX_EPS
    detection_output = DeformableDetrObjectDetectionOutput

    def build_parts(
        self, config: DeformableDetrConfig, *, backbone_body: nn.Module | None, query_selection: nn.Module | None, groups: list[QueryGroup] | None
    ) -> DetectorParts:
        class_embed, bbox_embed = _heads(config)
        model = DeformableDetrModel(config, bbox_embed, class_embed, query_selection=query_selection, backbone_body=backbone_body, groups=groups)
        return DetectorParts(model, class_embed, bbox_embed, _criterion(config))


CHECKPOINT_FORMAT = CheckpointFormat(
    config_class=DeformableDetrConfig,
    original=OriginalFormat(checkpoints.convert_original_state_dict, checkpoints.config_from_original_args, original_num_labels),
    key_alias=checkpoints.hf_decoder_alias,
    convert_config=DeformableDetrConfig.from_transformers,
)
DeformableDetrModel.checkpoint_format = CHECKPOINT_FORMAT
DeformableDetrForObjectDetection.checkpoint_format = CHECKPOINT_FORMAT
