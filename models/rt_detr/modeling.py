"""``RTDetrModel`` and ``RTDetrForObjectDetection``: RT-DETR as a builder over the query-group detector.

What is RT-DETR's own here, over ``models.common.detector.QueryGroupDetector``::

    pixels ─ ResNet-vd ─ encoder_input_proj (1x1 conv + BN per level)
           ─ hybrid encoder (AIFI on ``encode_proj_layers``, then CCFM)
           ─ decoder_input_proj (1x1 conv + BN; 3x3 stride-2 extra levels) ─ flattened memory
           ─ grid-anchor query selection (top-k by best class) ─ deformable decoder
             (box-MLP query positions, look-forward-twice refinement, eps 1e-5)
           ─ heads on every layer; varifocal + L1 + GIoU loss, the selected proposals supervised
             as ``_interm`` terms, contrastive denoising (``_dn``) in training.

No padding mask and no level embedding: images come at one fixed size. Checkpoint keys are those of
``transformers``' ``RTDetrForObjectDetection`` (a ``save_pretrained`` folder of either loads in
the other).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from detr_blocks.aifi import AIFI, AIFILayer
from detr_blocks.decoder import DeformableDecoder, DeformableDecoderLayer, DeformableDecoderOutput
from detr_blocks.encoder import DeformableEncoderOutput
from detr_blocks.hybrid_encoder import HybridEncoder
from detr_blocks.losses import SetCriterion
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.mlp import MLP
from detr_blocks.query_position import BoxMLPQueryPosition
from detr_blocks.refinement import LookForwardTwice
from detr_blocks.varifocal import VarifocalLoss
from models.backbones import ConvEncoder
from models.backbones.resnet_vd import resnet_vd_from_transformers_config
from models.common.deformable_transformer import DeformableTransformerModel, SelectedQueries
from models.common.family_detector import DetectorParts, FamilyDetector, checked_config
from models.common.key_rules import original_num_labels
from models.common.layers import deformable_attention
from models.common.multi_scale import MultiScaleFeatures, flatten_levels, project_levels
from models.common.pretrained import OriginalFormat
from models.common.pretrained_model import CheckpointFormat, PretrainedMixin
from models.common.query_groups import MATCHING, QueryGroup, QueryLayout
from models.common.stored_names import store_under
from models.rt_detr import checkpoints
from models.rt_detr.config import RTDetrConfig
from models.rt_detr.denoising_group import RTDetrDenoisingGroup
from models.rt_detr.outputs import RTDetrModelOutput, RTDetrObjectDetectionOutput
from models.rt_detr.query_selection import GridAnchorQuerySelection

BOX_EPS = 1e-5  # RT-DETR's inverse_sigmoid clamp


def _projection(in_channels: int, out_channels: int, eps: float, *, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, ``transformers``' ``Sequential`` layout (keys ``N.0``, ``N.1``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=eps),
    )


def _hybrid_encoder(config: RTDetrConfig) -> HybridEncoder:
    """AIFI (``encoder_layers`` post-norm layers) on each of ``encode_proj_layers``, then CCFM."""
    width = config.encoder_hidden_dim
    aifi = [
        AIFI(
            [
                AIFILayer(
                    width, config.encoder_ffn_dim, num_heads=config.encoder_attention_heads, dropout=config.dropout,
                    activation_dropout=config.activation_dropout, activation=config.encoder_activation_function,
                    norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
                )
                for _ in range(config.encoder_layers)
            ],
            d_model=width,
            temperature=float(config.positional_encoding_temperature),
        )
        for _ in config.encode_proj_layers
    ] if config.encoder_layers > 0 else []
    return HybridEncoder(
        aifi, config.encode_proj_layers if aifi else (), len(config.encoder_in_channels), width,
        expansion=config.hidden_expansion, activation=config.activation_function, eps=config.batch_norm_eps,
    )


def _decoder(config: RTDetrConfig, class_embed: nn.ModuleList | None, bbox_embed: nn.ModuleList | None) -> DeformableDecoder:
    """RT-DETR's decoder: box-MLP query positions; with box heads, look-forward-twice refinement."""
    layers = [
        DeformableDecoderLayer(
            config.d_model, config.decoder_ffn_dim, encoder_attn=deformable_attention(config, config.decoder_attention_heads, config.decoder_n_points),
            num_heads=config.decoder_attention_heads, dropout=config.dropout, attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout, activation=config.decoder_activation_function,
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
        )
        for _ in range(config.decoder_layers)
    ]
    decoder = DeformableDecoder(
        layers, bbox_embed=bbox_embed, class_embed=class_embed,
        refinement=LookForwardTwice(eps=BOX_EPS) if bbox_embed is not None else None,
        query_position=BoxMLPQueryPosition(config.d_model),
    )
    return store_under(decoder, {"query_position.mlp": "query_pos_head"})


def _prior_bias(config: RTDetrConfig) -> float:
    prior = config.initializer_bias_prior_prob or 1 / (config.num_labels + 1)
    return -math.log((1 - prior) / prior)


def _query_selection(config: RTDetrConfig) -> GridAnchorQuerySelection:
    anchor_shapes = None
    if config.anchor_image_size is not None:
        height, width = config.anchor_image_size
        strides = list(config.feat_strides) + [config.feat_strides[-1] * 2 ** (i + 1) for i in range(config.num_feature_levels - len(config.feat_strides))]
        anchor_shapes = [(height // stride, width // stride) for stride in strides]
    selection = GridAnchorQuerySelection(
        config.num_queries, config.d_model, config.num_labels, layer_norm_eps=config.layer_norm_eps,
        learn_initial_query=config.learn_initial_query, anchor_shapes=anchor_shapes,
    )
    nn.init.xavier_uniform_(selection.enc_score_head.weight)
    nn.init.constant_(selection.enc_score_head.bias, _prior_bias(config))
    nn.init.zeros_(selection.enc_bbox_head.layers[-1].weight)
    nn.init.zeros_(selection.enc_bbox_head.layers[-1].bias)
    if selection.weight_embedding is not None:
        nn.init.xavier_uniform_(selection.weight_embedding.weight)
    return selection


def _denoising(config: RTDetrConfig) -> list[QueryGroup]:
    """The denoising group when ``num_denoising > 0`` (its embedding is in the checkpoint only then)."""
    if config.num_denoising == 0:
        return []
    return [RTDetrDenoisingGroup(config.num_labels, config.d_model, num_denoising=config.num_denoising,
                                 label_noise_ratio=config.label_noise_ratio, box_noise_scale=config.box_noise_scale)]


class RTDetrModel(PretrainedMixin, DeformableTransformerModel):
    """ResNet-vd + hybrid encoder + grid-anchor query selection (+ denoising queries) + decoder.

    Args:
        config: the ``RTDetrConfig``.
        class_embed, bbox_embed: the decoder's per-layer heads (given by ``RTDetrForObjectDetection``);
            None, as ``transformers``' bare model: no refinement and no ``intermediate_logits``.
        backbone_body: another backbone network (returns a list of maps, carries ``channels``).
        query_selection: another query selection module.
        groups: the training-time query groups (default: the denoising group when ``num_denoising > 0``).

    Submodules (``transformers``' names): ``backbone`` (``model``: the ResNet-vd body),
    ``encoder_input_proj``, ``encoder`` (``HybridEncoder``), ``decoder_input_proj``, ``decoder``,
    the query selection's ``enc_output``, ``enc_score_head``, ``enc_bbox_head``
    (``weight_embedding``) and the denoising group's ``denoising_class_embed`` (at the model's level).
    """

    checkpoint_format: CheckpointFormat  # set below the classes
    is_bare = True

    def __init__(
        self, config: RTDetrConfig, class_embed: nn.ModuleList | None = None, bbox_embed: nn.ModuleList | None = None, *,
        backbone_body: nn.Module | None = None, query_selection: nn.Module | None = None, groups: list[QueryGroup] | None = None,
    ) -> None:
        config = checked_config(self, config)
        for name, heads in (("class_embed", class_embed), ("bbox_embed", bbox_embed)):
            if heads is not None and len(heads) != config.decoder_layers:
                raise ValueError(f"{name} must hold decoder_layers = {config.decoder_layers} heads, got {len(heads)}")
        if backbone_body is None:
            backbone_body = resnet_vd_from_transformers_config(config.backbone_config, freeze_batch_norm=config.freeze_backbone_batch_norms)
        channels = list(backbone_body.channels)
        if channels != config.encoder_in_channels:
            raise ValueError(f"backbone_body returns maps of {channels} channels; config.encoder_in_channels is {config.encoder_in_channels}")
        super().__init__(
            backbone=ConvEncoder(backbone_body),
            input_proj=None,
            level_embed=None,
            encoder=_hybrid_encoder(config),
            query_selection=query_selection or _query_selection(config),
            decoder=_decoder(config, class_embed, bbox_embed),
            num_channels=int(config.backbone_config.get("num_channels", 3)),
            output_class=RTDetrModelOutput,
            groups=_denoising(config) if groups is None else groups,
        )
        # the encoder's input projections keep BatchNorm's default eps (transformers' and the authors'); the rest use batch_norm_eps
        self.encoder_input_proj = nn.ModuleList(_projection(width, config.encoder_hidden_dim, 1e-5) for width in channels)
        extra = [
            _projection(config.encoder_hidden_dim if level == 0 else config.d_model, config.d_model, config.batch_norm_eps, kernel_size=3, stride=2)
            for level in range(config.num_feature_levels - len(channels))
        ]
        self.decoder_input_proj = nn.ModuleList([_projection(width, config.d_model, config.batch_norm_eps) for width in config.decoder_in_channels] + extra)
        self.config = config

    # ------------------------------------------------------------------------------ backbone
    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter."""
        self.backbone.requires_grad_(True)

    @property
    def denoising_class_embed(self) -> nn.Module | None:
        """The denoising group's label embedding (``[num_labels + 1, C]``), if it has one."""
        return next((group.denoising_class_embed for group in self.query_groups if isinstance(group, RTDetrDenoisingGroup)), None)

    # --------------------------------------------------------------------------------- steps
    def backbone_maps(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[torch.Tensor]:
        """Step 1: the backbone's maps, each projected to ``encoder_hidden_dim`` (1x1 conv + BN)."""
        return [projection(feature) for projection, (feature, _) in zip(self.encoder_input_proj, self.backbone(pixel_values, pixel_mask))]

    def decoder_inputs(self, maps: list[torch.Tensor]) -> MultiScaleFeatures:
        """Step 3: the hybrid encoder's maps projected to ``d_model`` (extra levels by 3x3 stride-2
        convolutions, the first from the last map, the next from the previous extra level),
        flattened: the decoder's memory, without padding, positions or level embeddings."""
        sources = project_levels(self.decoder_input_proj, maps)
        source, spatial_shapes_list, spatial_shapes, level_start_index = flatten_levels(sources)
        padding = torch.zeros(source.shape[:2], dtype=torch.bool, device=source.device)
        ratios = source.new_ones(source.shape[0], len(sources), 2)
        return MultiScaleFeatures(source, padding, None, spatial_shapes, spatial_shapes_list, level_start_index, ratios)

    def decode(self, queries: SelectedQueries, memory: torch.Tensor, features: MultiScaleFeatures, output_hidden_states: bool = False) -> DeformableDecoderOutput:
        """Step 5: the decoder stack (no padding mask: every token is real)."""
        return self.decoder(
            queries.target, queries.reference_points, memory, features.spatial_shapes, features.level_start_index,
            None, None, None, self_attn_mask=queries.self_attn_mask, output_hidden_states=output_hidden_states,
        )

    def encoder_attention_layers(self) -> nn.ModuleList:
        """The AIFI layers (dense self-attention over one level each), in order."""
        return nn.ModuleList(layer for aifi in self.encoder.encoder for layer in aifi.layers)

    def _steps(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, output_hidden_states: bool, targets: list[dict[str, torch.Tensor]] | None) -> dict[str, Any]:
        maps = self.backbone_maps(pixel_values, pixel_mask)
        encoded, states = self.encode_maps(maps, output_hidden_states)
        features = self.decoder_inputs(encoded)
        queries, layout = self.select_queries(features.source, features, targets)
        decoded = self.decode(queries, features.source, features, output_hidden_states)
        return self.output_fields(features, DeformableEncoderOutput(encoded, states), queries, decoded, layout)

    def encode_maps(self, maps: list[torch.Tensor], output_hidden_states: bool = False) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...] | None]:
        """Step 2: the hybrid encoder → its fused maps, and with ``output_hidden_states`` the maps
        ``transformers`` reports (each AIFI level's input ``[B, C, H, W]``, then the last AIFI output)."""
        if not output_hidden_states:
            return self.encoder(maps), None
        recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        handles = [aifi.register_forward_hook(lambda module, args, output: recorded.append((args[0], output))) for aifi in self.encoder.encoder]
        try:
            encoded = self.encoder(maps)
        finally:
            for handle in handles:
                handle.remove()
        return encoded, tuple(inputs for inputs, _ in recorded) + ((recorded[-1][1],) if recorded else ())

    def output_fields(
        self, features: MultiScaleFeatures, encoded: DeformableEncoderOutput, queries: SelectedQueries, decoded: DeformableDecoderOutput, layout: QueryLayout
    ) -> dict[str, Any]:
        """``transformers``' RT-DETR fields (the matching queries' slices; ``intermediate_logits``
        is the detector's), plus ``query_groups`` and ``denoising_meta_values`` when groups ran."""
        fields = super().output_fields(features, encoded, queries, decoded, layout)
        initial = fields.pop("init_reference_points")
        fields.update(
            initial_reference_points=initial,
            init_reference_points=queries.reference_logits.detach() if queries.reference_logits is not None else None,
            enc_topk_logits=queries.proposal_logits,
            enc_topk_bboxes=queries.proposal_boxes,
        )
        denoising = (fields.get("query_groups") or {}).get("dn")
        if denoising is not None:
            meta = denoising.state
            fields["denoising_meta_values"] = {"dn_num_group": meta.num_dn_group, "dn_num_split": [meta.pad_size, layout.block(MATCHING).size]}
        return fields



def _heads(config: RTDetrConfig) -> tuple[nn.ModuleList, nn.ModuleList]:
    """One class head (xavier, prior bias) and one box head (zero last layer) per decoder layer."""
    class_embed, bbox_embed = [], []
    for _ in range(config.decoder_layers):
        head = nn.Linear(config.d_model, config.num_labels)
        nn.init.xavier_uniform_(head.weight)
        nn.init.constant_(head.bias, _prior_bias(config))
        box = MLP(config.d_model, config.d_model, 4, num_layers=3)
        nn.init.zeros_(box.layers[-1].weight)
        nn.init.zeros_(box.layers[-1].bias)
        class_embed.append(head)
        bbox_embed.append(box)
    return nn.ModuleList(class_embed), nn.ModuleList(bbox_embed)


def rt_detr_criterion(config: RTDetrConfig) -> SetCriterion:
    """RT-DETR's loss: matching with focal class costs, varifocal classification, L1 and GIoU boxes."""
    matcher = HungarianMatcher(config.matcher_class_cost, config.matcher_bbox_cost, config.matcher_giou_cost,
                               focal_alpha=config.matcher_alpha, focal_gamma=config.matcher_gamma)
    weights = {"loss_vfl": float(config.weight_loss_vfl), "loss_bbox": float(config.weight_loss_bbox), "loss_giou": float(config.weight_loss_giou)}
    return SetCriterion(config.num_labels, matcher, weight_dict=weights, losses=("vfl", "boxes"),
                        extra_losses={"vfl": VarifocalLoss(alpha=config.focal_loss_alpha, gamma=config.focal_loss_gamma)})


class RTDetrForObjectDetection(FamilyDetector):
    """RT-DETR with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` / ``bbox_embed`` hold one head per decoder layer; the decoder holds the same
    modules (``model.decoder.class_embed``), under which names ``state_dict()`` lists them once,
    as ``transformers`` saves them.

    Constructor: ``RTDetrForObjectDetection(config, *, backbone_body=None, query_selection=None,
    groups=None, criterion=None)`` (``models.common.family_detector``).

    Loss terms (unweighted in ``loss_dict``; weights ``weight_loss_*``): ``loss_vfl``,
    ``loss_bbox``, ``loss_giou`` of the last layer; with ``auxiliary_loss``, ``_<i>`` of the
    earlier layers, ``_interm`` of the selected encoder proposals (``transformers``:
    ``_aux_<i>`` and ``_aux_<D-1>``) and, in training, ``_dn_<i>`` / ``_dn`` of the denoising
    queries.
    """

    box_eps = BOX_EPS
    detection_output = RTDetrObjectDetectionOutput
    initial_reference_field = "initial_reference_points"  # init_reference_points are logits here

    def build_parts(
        self, config: RTDetrConfig, *, backbone_body: nn.Module | None, query_selection: nn.Module | None, groups: list[QueryGroup] | None
    ) -> DetectorParts:
        """Per-layer heads (shared with the decoder), the RT-DETR model around them, the VFL criterion."""
        class_embed, bbox_embed = _heads(config)
        return DetectorParts(
            model=RTDetrModel(config, class_embed, bbox_embed, backbone_body=backbone_body, query_selection=query_selection, groups=groups),
            class_embed=class_embed, bbox_embed=bbox_embed, criterion=rt_detr_criterion(config),
        )

    def detection_fields(self, fields: dict[str, Any], classes: torch.Tensor, boxes: torch.Tensor) -> dict[str, Any]:
        """Adds ``intermediate_logits`` ``[B, D, Q, K]``."""
        return {**fields, "intermediate_logits": classes.transpose(0, 1)}

    def proposal_predictions(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The *selected* proposals, class-aware (``interm_outputs``, terms ``_interm``), with the
        auxiliary losses only (as ``transformers`` and the authors' code)."""
        if not self.config.auxiliary_loss:
            return {}
        return {"interm_outputs": {"logits": fields["enc_topk_logits"], "pred_boxes": fields["enc_topk_bboxes"]}}


_HEADS = ("class_embed.", "bbox_embed.")


def _heads_from_file(state_dict: dict[str, torch.Tensor], config: RTDetrConfig) -> dict[str, torch.Tensor]:
    """``transformers`` writes the per-layer heads once, under the decoder's names
    (``model.decoder.class_embed.N``); ours are the detector's (``class_embed.N``)."""
    return {key[len("model.decoder."):] if key.startswith(tuple(f"model.decoder.{h}" for h in _HEADS)) else key: value for key, value in state_dict.items()}


def _heads_to_file(state_dict: dict[str, torch.Tensor], config: RTDetrConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``_heads_from_file``, for ``save_pretrained``."""
    return {f"model.decoder.{key}" if key.startswith(_HEADS) else key: value for key, value in state_dict.items()}


CHECKPOINT_FORMAT = CheckpointFormat(
    config_class=RTDetrConfig, from_file=_heads_from_file, to_file=_heads_to_file,
    original=OriginalFormat(checkpoints.convert_original_state_dict, checkpoints.config_from_original_args, original_num_labels),
)
RTDetrModel.checkpoint_format = CHECKPOINT_FORMAT
RTDetrForObjectDetection.checkpoint_format = CHECKPOINT_FORMAT
