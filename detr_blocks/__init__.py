"""Reusable Deformable DETR building blocks.

Conventions: padding masks are bool with True = padding (the paper's; Hugging Face's
``pixel_mask``/``attention_mask`` is the opposite); boxes are normalized (cx, cy, w, h) unless a
name says ``xyxy``; multi-scale features are flattened level by level into ``[B, S, C]``.

Public names and constructor signatures:

Position embeddings (``forward(mask [B, H, W] bool, dtype) -> [B, 2F, H, W]``)
    SinePositionEmbedding(num_pos_feats=128, temperature=10000.0, normalize=True, scale=None (2π),
                          offset=0.5, eps=1e-6)
    LearnedPositionEmbedding(num_pos_feats=128, max_size=50)
Box ops
    box_cxcywh_to_xyxy(boxes), box_xyxy_to_cxcywh(boxes), box_area(boxes),
    box_iou(boxes1, boxes2, aligned=False), generalized_box_iou(boxes1, boxes2, aligned=False)
Small pieces
    MLP(input_dim, hidden_dim, output_dim, num_layers, activation="relu")
    get_activation(name_or_callable), ACTIVATIONS (the names), valid_ratios(mask, dtype=torch.float32) -> [B, 2]
    inverse_sigmoid(x, eps=1e-5), refine_boxes(delta, reference, eps=1e-5)
    MultiheadSelfAttention(embed_dim=256, num_heads=8, dropout=0.0, bias=True)
Feed-forward block (encoder and decoder layers build it by default, as fc1, fc2, final_layer_norm)
    FeedForward(d_model=256, ffn_dim=1024, *, activation="relu", dropout=0.1, activation_dropout=0.0,
                norm_layer=nn.LayerNorm)  forward([..., C]) -> [..., C], residual sum and norm included
Encoder
    DeformableEncoderLayer(d_model=256, ffn_dim=1024, *, self_attn=None, num_heads=8, num_levels=4,
                           num_points=4, dropout=0.1, activation_dropout=0.0, activation="relu",
                           feed_forward=None, norm_layer=nn.LayerNorm)
    DeformableEncoder(layers)  -> DeformableEncoderOutput(last_hidden_state, hidden_states)
    encoder_reference_points(spatial_shapes, valid_ratios) -> [B, S, L, 2]
Decoder
    DeformableDecoderLayer(d_model=256, ffn_dim=1024, *, self_attn=None, encoder_attn=None,
                           num_heads=8, num_levels=4, num_points=4, dropout=0.1,
                           attention_dropout=0.0, activation_dropout=0.0, activation="relu",
                           feed_forward=None, norm_layer=nn.LayerNorm)
    DeformableDecoder(layers, bbox_embed=None, class_embed=None, *, refinement=None,
                      query_position=None, intermediate_norm=None)
        -> DeformableDecoderOutput(last_hidden_state, intermediate_hidden_states,
                                   intermediate_reference_points, hidden_states)
Decoder policies (per layer)
    refinement: NoRefinement(), DetachedRefinement(eps=1e-5) (default with bbox_embed),
        LookForwardTwice(eps=1e-5) (DINO); base ReferenceRefinement, forward(index, hidden_states,
        reference_points, box_head) -> RefinedReferences(next_reference, recorded)
    query_position: InputQueryPosition() (default), BoxQueryPosition(d_model=256, *, ref_dim=4,
        num_pos_feats=None (C/2), temperature=10000.0, scale=2π, num_layers=2) (DINO);
        forward(index, hidden_states, level_points, position_embeddings) -> [B, Q, C] | None;
        BoxMLPQueryPosition(d_model=256, *, ref_dim=4, hidden_dim=None (2C), num_layers=2) (RT-DETR: an
        MLP on the box coordinates, no sine)
    box_sine_embedding(boxes [..., 2|4], num_pos_feats=128, temperature=10000.0, scale=2π, *, order="yx")
        -> [..., 2F|4F] in the order (y, x[, w, h]) (DINO's query positions) or, order="xy", (x, y[, w, h])
        (Deformable DETR's two-stage proposals, of sigmoid(logits)); SinePositionEmbedding is the one of pixels
Two-stage
    encoder_output_proposals(memory, padding_mask, spatial_shapes, base_size=0.05,
                             valid_range=(0.01, 0.99)) -> (memory, proposal_logits)
    select_top_proposals(class_logits, coord_logits, k, *, scoring="first_class" | "max_class" | callable)
    gather_proposals(class_logits, coord_logits, indices) -> (selected class logits, selected boxes)
        -> (coord_logits [B, k, 4] detached, indices [B, k]);  proposal_scores(class_logits, scoring) -> [B, S]
    proposal_position_embedding(proposal_logits, ...): deprecated, = box_sine_embedding(logits.sigmoid(), order="xy")
Matching and losses
    HungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, focal_alpha=0.25, focal_gamma=2.0);
        NaN/inf predictions raise NonFinitePredictions (a ValueError and a FloatingPointError)
    sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0) -> elementwise loss
    SetCriterion(num_classes, matcher=None, weight_dict=None (paper: loss_ce 2, loss_bbox 5, loss_giou 2),
                 losses=("labels", "boxes", "cardinality"), focal_alpha=0.25, focal_gamma=2.0, *,
                 extra_losses=None ({name: fn(outputs, targets, indices, num_boxes) -> {term: tensor}}),
                 logged=("class_error", "cardinality_error"))
        forward(outputs, targets) -> (total, loss_dict); outputs: logits, pred_boxes, optional
        auxiliary_outputs (list) and enc_outputs (two-stage); targets: class_labels, boxes.
        Overridable: get_loss(name, outputs, targets, indices, num_boxes, *, log=False),
        losses_for(outputs, targets, num_boxes, *, log=False, indices=None), compute_losses,
        encoder_targets; weight_of(name); a term neither weighted nor logged raises.
    weight_names(name) -> [name, ..., base]: trailing _<suffix> parts (layers, _enc, group names) stripped one by one
    average_num_boxes(targets, device) -> float (averaged over processes when distributed)
Contrastive denoising (DINO)
    contrastive_denoising_queries(targets, num_classes, label_embedding, num_queries, *, dn_number=100,
        label_noise_ratio=0.5, box_noise_scale=0.4, eps=1e-3)
        -> DenoisingQueries(content [B, pad, C], box_logits [B, pad, 4], attn_mask [pad+Q, pad+Q], meta)
    DenoisingMeta(pad_size, num_dn_group) (.group_size); denoising_group_count(max_targets, dn_number)
    denoising_attention_mask(meta, num_queries, device=None) -> bool [pad+Q, pad+Q], True = blocked
    split_denoising_outputs(tensor, meta, dim=1) -> (dn part | None, matching part)
    denoising_matching_indices(targets, meta) -> [(query_index, target_index)] per image
    denoising_losses(criterion, dn_outputs, targets, meta, num_boxes) -> {"<term>_dn", "<term>_dn_<i>"}
Contrastive denoising over padded targets (RT-DETR; same layout, mask, matching and losses as above)
    padded_denoising_queries(targets, num_classes, label_embedding, num_queries, *, num_denoising=100,
        label_noise_ratio=0.5, box_noise_scale=1.0, eps=1e-5, noise=None) -> DenoisingQueries | None
        (None when no image has a target; box_noise_scale 0 leaves the boxes un-logit'd, as the authors')
    padded_denoising_meta(counts, num_denoising) -> DenoisingMeta | None (max(num_denoising // M, 1) groups)
    PaddedDenoisingNoise(label_flip [B, pad], new_labels [B, pad], box_sign [B, pad, 4], box_magnitude [B, pad, 4])
    draw_padded_denoising_noise(batch, meta, num_classes, *, label_noise_ratio, box_noise_scale,
        dtype=torch.float32, device=None) -> PaddedDenoisingNoise (the reference's draws, in its order)
RT-DETR: hybrid encoder (AIFI + CCFM), grid anchors, varifocal loss (``transformers``' parameter names)
    sincos_2d_position_embedding(width, height, dim=256, temperature=10000.0, *, dtype, device)
        -> [W·H, dim], rows enumerated width-major as RT-DETR's code (see the module docstring)
    AIFILayer(d_model=256, ffn_dim=1024, *, self_attn=None (MultiheadSelfAttention), num_heads=8,
              dropout=0.0, activation_dropout=0.0, activation="gelu", feed_forward=None,
              norm_layer=nn.LayerNorm)  post-norm; forward(x [B, S, C], position_embeddings
              [S, C] | [B, S, C] | None, attention_mask=None) -> [B, S, C]
    AIFI(layers, d_model=256, temperature=10000.0)  forward(map [B, C, H, W]) -> [B, C, H, W]
    ConvNormLayer(in_channels, out_channels, kernel_size, stride=1, *, padding=None (k-1)//2,
                  activation=None, eps=1e-5)  conv (no bias) → BatchNorm2d → activation
    RepVggBlock(channels, *, activation="silu", eps=1e-5)  act(bn(conv3x3 x) + bn(conv1x1 x));
        .fuse() -> FusedRepVggBlock (one 3x3 conv with bias, equal in eval mode);
        fuse_repvgg_blocks(module) fuses every block inside, in place
    CSPRepLayer(in_channels, out_channels, *, num_blocks=3, expansion=1.0, activation="silu", eps=1e-5)
    CCFM(num_levels=3, channels=256, *, num_blocks=3, expansion=1.0, activation="silu", eps=1e-5)
        forward(L maps [B, C, H_l, W_l], finest first) -> L fused maps (top-down FPN, bottom-up PAN)
    HybridEncoder(encoders, encode_indices=(2,), num_levels=3, channels=256, *, ...CCFM's)
        a CCFM whose maps at encode_indices first go through their encoders (AIFI)
    grid_anchors(spatial_shapes, grid_size=0.05, eps=0.01, *, dtype, device)
        -> (anchors [1, S, 4] logits, finfo.max where invalid; valid_mask bool [1, S, 1])
    varifocal_loss(logits, scores, positives, alpha=0.75, gamma=2.0) -> elementwise loss
    VarifocalLoss(alpha=0.75, gamma=2.0): SetCriterion extra loss, ``extra_losses={"vfl": VarifocalLoss()}``
        -> {"loss_vfl"} with the IoU-aware target (IoU of the detached matched box)
"""

from detr_blocks.activation import ACTIVATIONS, get_activation
from detr_blocks.aifi import AIFI, AIFILayer
from detr_blocks.anchors import grid_anchors
from detr_blocks.attention import MultiheadSelfAttention
from detr_blocks.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from detr_blocks.ccfm import CCFM
from detr_blocks.conv_norm import ConvNormLayer
from detr_blocks.csp import CSPRepLayer
from detr_blocks.decoder import DeformableDecoder, DeformableDecoderLayer, DeformableDecoderOutput
from detr_blocks.denoising import (
    DenoisingMeta,
    DenoisingQueries,
    contrastive_denoising_queries,
    denoising_attention_mask,
    denoising_group_count,
    denoising_losses,
    denoising_matching_indices,
    split_denoising_outputs,
)
from detr_blocks.encoder import DeformableEncoder, DeformableEncoderLayer, DeformableEncoderOutput, encoder_reference_points
from detr_blocks.feed_forward import FeedForward
from detr_blocks.functional import inverse_sigmoid, refine_boxes
from detr_blocks.hybrid_encoder import HybridEncoder
from detr_blocks.losses import SetCriterion, average_num_boxes, sigmoid_focal_loss, weight_names
from detr_blocks.matcher import HungarianMatcher, NonFinitePredictions
from detr_blocks.mlp import MLP
from detr_blocks.padded_denoising import PaddedDenoisingNoise, draw_padded_denoising_noise, padded_denoising_meta, padded_denoising_queries
from detr_blocks.position_embedding import LearnedPositionEmbedding, SinePositionEmbedding
from detr_blocks.query_position import BoxMLPQueryPosition, BoxQueryPosition, InputQueryPosition, box_sine_embedding
from detr_blocks.refinement import DetachedRefinement, LookForwardTwice, NoRefinement, ReferenceRefinement, RefinedReferences
from detr_blocks.repvgg import FusedRepVggBlock, RepVggBlock, fuse_repvgg_blocks
from detr_blocks.sincos_2d import sincos_2d_position_embedding
from detr_blocks.two_stage import encoder_output_proposals, gather_proposals, proposal_position_embedding, proposal_scores, select_top_proposals
from detr_blocks.valid_ratio import valid_ratios
from detr_blocks.varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "ACTIVATIONS",
    "AIFI",
    "AIFILayer",
    "BoxMLPQueryPosition",
    "BoxQueryPosition",
    "CCFM",
    "CSPRepLayer",
    "ConvNormLayer",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableDecoderOutput",
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "DeformableEncoderOutput",
    "DenoisingMeta",
    "DenoisingQueries",
    "DetachedRefinement",
    "FeedForward",
    "FusedRepVggBlock",
    "HungarianMatcher",
    "NonFinitePredictions",
    "HybridEncoder",
    "InputQueryPosition",
    "LearnedPositionEmbedding",
    "LookForwardTwice",
    "MLP",
    "MultiheadSelfAttention",
    "NoRefinement",
    "PaddedDenoisingNoise",
    "ReferenceRefinement",
    "RefinedReferences",
    "RepVggBlock",
    "SetCriterion",
    "SinePositionEmbedding",
    "VarifocalLoss",
    "average_num_boxes",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_sine_embedding",
    "box_xyxy_to_cxcywh",
    "contrastive_denoising_queries",
    "denoising_attention_mask",
    "denoising_group_count",
    "denoising_losses",
    "denoising_matching_indices",
    "draw_padded_denoising_noise",
    "encoder_output_proposals",
    "encoder_reference_points",
    "fuse_repvgg_blocks",
    "generalized_box_iou",
    "get_activation",
    "grid_anchors",
    "inverse_sigmoid",
    "padded_denoising_meta",
    "padded_denoising_queries",
    "proposal_position_embedding",
    "proposal_scores",
    "refine_boxes",
    "select_top_proposals",
    "gather_proposals",
    "sigmoid_focal_loss",
    "sincos_2d_position_embedding",
    "split_denoising_outputs",
    "valid_ratios",
    "varifocal_loss",
    "weight_names",
]
