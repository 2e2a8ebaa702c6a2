"""DINO's mixed query selection: positions from the top-k encoder proposals, learned contents.

Every encoder token proposes a box (``detr_blocks.two_stage``); the proposals are scored by the
maximum over classes; the top ``num_queries`` give the decoder's reference boxes (detached), while
the content queries are a learned table (``tgt_embed``). Parameter names follow the original code
(``enc_output``, ``enc_output_norm``, ``enc_out_class_embed``, ``enc_out_bbox_embed``,
``tgt_embed``); the model stores them at its own level.
"""

from __future__ import annotations

import torch
from torch import nn

from detr_blocks.two_stage import encoder_output_proposals, gather_proposals, select_top_proposals
from models.common.deformable_transformer import SelectedQueries
from models.common.multi_scale import MultiScaleFeatures


class MixedQuerySelection(nn.Module):
    """Top-k proposals (by max class score) as reference boxes; learned content queries.

    Args:
        num_queries: k.
        d_model: C.
        class_head: scores a token's proposal ``[.., C] → [.., K]`` (may be the decoder's head).
        box_head: regresses a token's box delta ``[.., C] → [.., 4]`` (may be the decoder's head).

    Returns ``SelectedQueries`` with ``proposal_logits`` ``[B, k, K]`` and ``proposal_boxes``
    ``[B, k, 4]`` (the selected proposals through the heads; boxes not detached).
    """

    def __init__(self, num_queries: int, d_model: int, class_head: nn.Module, box_head: nn.Module) -> None:
        super().__init__()
        if num_queries < 1 or d_model < 1:
            raise ValueError(f"num_queries and d_model must be positive, got {num_queries} and {d_model}")
        self.num_queries = num_queries
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed = class_head
        self.enc_out_bbox_embed = box_head
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        nn.init.normal_(self.tgt_embed.weight)

    def forward(self, memory: torch.Tensor, features: MultiScaleFeatures, proposal_heads: tuple[nn.Module, nn.Module] | None = None) -> SelectedQueries:
        """memory ``[B, S, C]`` → ``SelectedQueries`` (``proposal_heads`` is unused: the heads are this module's)."""
        masked, proposals = encoder_output_proposals(memory, features.padding_mask, features.spatial_shapes_list)
        object_queries = self.enc_output_norm(self.enc_output(masked))
        enc_outputs_class = self.enc_out_class_embed(object_queries)
        enc_outputs_coord_logits = self.enc_out_bbox_embed(object_queries) + proposals
        top_logits, indices = select_top_proposals(enc_outputs_class, enc_outputs_coord_logits, self.num_queries, scoring="max_class")
        topk_class, topk_boxes = gather_proposals(enc_outputs_class, enc_outputs_coord_logits, indices)
        target = self.tgt_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return SelectedQueries(
            target,
            top_logits.detach().sigmoid(),
            None,
            enc_outputs_class,
            enc_outputs_coord_logits,
            proposal_logits=topk_class,
            proposal_boxes=topk_boxes,
        )
