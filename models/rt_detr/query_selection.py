"""RT-DETR's query selection: the top-k encoder tokens over fixed grid anchors.

Every token of the decoder's input levels proposes a box around its grid anchor
(``detr_blocks.grid_anchors``); tokens whose anchor lies outside ``(0.01, 0.99)`` are zeroed first.
The proposals are scored by their best class; the top ``num_queries`` give the decoder its
reference boxes (detached) and its content queries (the selected tokens' features, detached, or
a learned table with ``learn_initial_query``). Parameter names follow ``transformers``
(``enc_output``, ``enc_score_head``, ``enc_bbox_head``, ``weight_embedding``); the model stores
them at its own level.
"""

from __future__ import annotations

import torch
from torch import nn

from detr_blocks.anchors import grid_anchors
from detr_blocks.mlp import MLP
from detr_blocks.two_stage import proposal_scores
from models.common.deformable_transformer import SelectedQueries
from models.common.multi_scale import MultiScaleFeatures


class GridAnchorQuerySelection(nn.Module):
    """Top-k proposals over grid anchors (RT-DETR).

    Args:
        num_queries: k.
        d_model: C.
        num_labels: K.
        layer_norm_eps: of ``enc_output``'s LayerNorm.
        learn_initial_query: learned content queries (``weight_embedding``) instead of the selected
            tokens' features.
        anchor_shapes: the levels' (H, W) for which the anchors are computed once, at construction
            (``anchor_image_size`` / strides); other input sizes compute theirs per call.

    Returns ``SelectedQueries`` with ``proposal_logits`` ``[B, k, K]``, ``proposal_boxes``
    ``[B, k, 4]`` (with their graph) and ``reference_logits`` ``[B, k, 4]`` (detached).

    ``token_boxes`` (attribute, default True): the box head runs on every token, and
    ``enc_outputs_coord_logits`` reports them all. Set False for inference when only detections
    are wanted (``models.rt_detr.inference.prepare_for_inference(detections_only=True)``): the
    selection needs class scores only, so the box head then runs on the k selected tokens and
    ``enc_outputs_coord_logits`` is None; every other output is the same.
    """

    token_boxes: bool = True

    def __init__(
        self,
        num_queries: int,
        d_model: int,
        num_labels: int,
        *,
        layer_norm_eps: float = 1e-5,
        learn_initial_query: bool = False,
        anchor_shapes: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_queries", num_queries), ("d_model", d_model), ("num_labels", num_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_queries = num_queries
        self.enc_output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model, eps=layer_norm_eps))
        self.enc_score_head = nn.Linear(d_model, num_labels)
        self.enc_bbox_head = MLP(d_model, d_model, 4, num_layers=3)
        self.weight_embedding = nn.Embedding(num_queries, d_model) if learn_initial_query else None
        self.anchor_shapes = None if anchor_shapes is None else [tuple(shape) for shape in anchor_shapes]
        anchors, valid = grid_anchors(self.anchor_shapes) if anchor_shapes is not None else (torch.empty(0), torch.empty(0, dtype=torch.bool))
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("valid_mask", valid, persistent=False)

    def anchors_for(self, features: MultiScaleFeatures, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(anchor logits [1, S, 4], valid bool [1, S, 1])`` of the decoder's input levels."""
        if self.anchor_shapes is not None and [tuple(shape) for shape in features.spatial_shapes_list] == self.anchor_shapes:
            return self.anchors.to(like.dtype), self.valid_mask
        return grid_anchors(features.spatial_shapes_list, dtype=like.dtype, device=like.device)

    def forward(self, memory: torch.Tensor, features: MultiScaleFeatures, proposal_heads: tuple[nn.Module, nn.Module] | None = None) -> SelectedQueries:
        """memory ``[B, S, C]`` (the decoder's flattened input) → ``SelectedQueries`` (``proposal_heads``
        is unused: the heads are this module's)."""
        anchors, valid = self.anchors_for(features, memory)
        if self.num_queries > memory.shape[1]:
            raise ValueError(f"num_queries ({self.num_queries}) exceeds the {memory.shape[1]} tokens of the decoder's input levels: give a larger image")
        output_memory = self.enc_output(memory * valid.to(memory.dtype))
        enc_outputs_class = self.enc_score_head(output_memory)
        indices = torch.topk(proposal_scores(enc_outputs_class, "max_class"), self.num_queries, dim=1).indices
        selected_memory = _rows(output_memory, indices)
        if self.token_boxes:
            enc_outputs_coord_logits = self.enc_bbox_head(output_memory) + anchors
            box_logits = _rows(enc_outputs_coord_logits, indices)
        else:  # the box head on the selected tokens only: the same boxes, no per-token ones
            enc_outputs_coord_logits = None
            box_logits = self.enc_bbox_head(selected_memory) + _rows(anchors.expand(memory.shape[0], -1, -1), indices)
        if self.weight_embedding is not None:
            target = self.weight_embedding.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        else:
            target = selected_memory.detach()
        return SelectedQueries(
            target,
            box_logits.detach().sigmoid(),
            None,
            enc_outputs_class,
            enc_outputs_coord_logits,
            proposal_logits=_rows(enc_outputs_class, indices),
            proposal_boxes=box_logits.sigmoid(),
            reference_logits=box_logits.detach(),
        )


def _rows(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tensor`` ``[B, S, D]`` at the token ``indices`` ``[B, k]`` → ``[B, k, D]``."""
    return torch.gather(tensor, 1, indices.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))
