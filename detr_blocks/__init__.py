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
    inverse_sigmoid(x, eps=1e-5), refine_boxes(delta, reference)
    get_activation(name_or_callable), valid_ratios(mask, dtype=torch.float32) -> [B, 2]
    MultiheadSelfAttention(embed_dim=256, num_heads=8, dropout=0.0, bias=True)
Encoder
    DeformableEncoderLayer(d_model=256, ffn_dim=1024, *, self_attn=None, num_heads=8, num_levels=4,
                           num_points=4, dropout=0.1, activation_dropout=0.0, activation="relu")
    DeformableEncoder(layers)  -> DeformableEncoderOutput(last_hidden_state, hidden_states)
    encoder_reference_points(spatial_shapes, valid_ratios) -> [B, S, L, 2]
Decoder
    DeformableDecoderLayer(d_model=256, ffn_dim=1024, *, self_attn=None, encoder_attn=None,
                           num_heads=8, num_levels=4, num_points=4, dropout=0.1,
                           attention_dropout=0.0, activation_dropout=0.0, activation="relu")
    DeformableDecoder(layers, bbox_embed=None, class_embed=None)
        -> DeformableDecoderOutput(last_hidden_state, intermediate_hidden_states,
                                   intermediate_reference_points, hidden_states)
Two-stage
    encoder_output_proposals(memory, padding_mask, spatial_shapes, base_size=0.05,
                             valid_range=(0.01, 0.99)) -> (memory, proposal_logits)
    select_top_proposals(class_logits, coord_logits, k) -> (coord_logits [B, k, 4], indices)
    proposal_position_embedding(proposal_logits, num_pos_feats=128, temperature=10000.0, scale=2π)
Matching and losses
    HungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, focal_alpha=0.25, focal_gamma=2.0)
    sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0) -> elementwise loss
    SetCriterion(num_classes, matcher=None, weight_dict=None (paper: loss_ce 2, loss_bbox 5, loss_giou 2),
                 losses=("labels", "boxes", "cardinality"), focal_alpha=0.25, focal_gamma=2.0)
        forward(outputs, targets) -> (total, loss_dict); outputs: logits, pred_boxes, optional
        auxiliary_outputs (list) and enc_outputs (two-stage); targets: class_labels, boxes
    average_num_boxes(targets, device) -> float (averaged over processes when distributed)
"""

from detr_blocks.activation import get_activation
from detr_blocks.attention import MultiheadSelfAttention
from detr_blocks.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from detr_blocks.decoder import DeformableDecoder, DeformableDecoderLayer, DeformableDecoderOutput
from detr_blocks.encoder import DeformableEncoder, DeformableEncoderLayer, DeformableEncoderOutput, encoder_reference_points
from detr_blocks.functional import inverse_sigmoid, refine_boxes
from detr_blocks.losses import SetCriterion, average_num_boxes, sigmoid_focal_loss
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.mlp import MLP
from detr_blocks.position_embedding import LearnedPositionEmbedding, SinePositionEmbedding
from detr_blocks.two_stage import encoder_output_proposals, proposal_position_embedding, select_top_proposals
from detr_blocks.valid_ratio import valid_ratios

__all__ = [
    "MLP",
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableDecoderOutput",
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "DeformableEncoderOutput",
    "HungarianMatcher",
    "LearnedPositionEmbedding",
    "MultiheadSelfAttention",
    "SetCriterion",
    "SinePositionEmbedding",
    "average_num_boxes",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "encoder_output_proposals",
    "encoder_reference_points",
    "generalized_box_iou",
    "get_activation",
    "inverse_sigmoid",
    "proposal_position_embedding",
    "refine_boxes",
    "select_top_proposals",
    "sigmoid_focal_loss",
    "valid_ratios",
]
