"""Deformable DETR's two ways to choose the decoder's queries, as modules the model is given.

- ``LearnedQueries``: Q learned (position, content) pairs; reference points from the positions.
- ``TwoStageProposals``: every encoder token proposes a box; the top-k by class 0 seed the decoder.

Parameter names are those of ``transformers`` (the model stores them at its own level).
"""

from __future__ import annotations

import torch
from torch import nn

from detr_blocks.query_position import box_sine_embedding
from detr_blocks.two_stage import encoder_output_proposals, select_top_proposals
from models.common.deformable_transformer import SelectedQueries
from models.common.multi_scale import MultiScaleFeatures


class LearnedQueries(nn.Module):
    """One-stage queries: ``query_position_embeddings`` ``[Q, 2C]`` split into (position, content);
    ``reference_points = sigmoid(Linear(position))`` ``[B, Q, 2]``."""

    def __init__(self, num_queries: int, d_model: int) -> None:
        super().__init__()
        if num_queries < 1 or d_model < 1:
            raise ValueError(f"num_queries and d_model must be positive, got {num_queries} and {d_model}")
        self.d_model = d_model
        self.query_position_embeddings = nn.Embedding(num_queries, d_model * 2)
        self.reference_points = nn.Linear(d_model, 2)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)

    def forward(self, memory: torch.Tensor, features: MultiScaleFeatures, proposal_heads: tuple[nn.Module, nn.Module] | None = None) -> SelectedQueries:
        """memory ``[B, S, C]`` (only its batch size is used) → ``SelectedQueries``."""
        batch = memory.shape[0]
        query_position, target = self.query_position_embeddings.weight.split(self.d_model, dim=1)
        query_position = query_position.unsqueeze(0).expand(batch, -1, -1)
        target = target.unsqueeze(0).expand(batch, -1, -1)
        return SelectedQueries(target, self.reference_points(query_position).sigmoid(), query_position)


class TwoStageProposals(nn.Module):
    """Two-stage queries: per-token proposals scored by the proposal heads; the top ``num_proposals``
    by class 0 become reference boxes ``[B, k, 4]``; their sine embedding, through ``pos_trans`` and
    ``pos_trans_norm``, gives the query positions and contents.

    With ``mixed_selection`` (H-DETR's switch, as DINO's mixed query selection) the contents are a
    learned table ``query_position_embeddings`` ``[k, C]`` instead (the original code's
    ``query_embed``; the name is the key ``transformers``' layout gives it).

    Submodules: ``enc_output``, ``enc_output_norm``, ``pos_trans``, ``pos_trans_norm``
    (+ ``query_position_embeddings`` with mixed selection).
    """

    def __init__(self, num_proposals: int, d_model: int, *, mixed_selection: bool = False) -> None:
        super().__init__()
        if num_proposals < 1 or d_model < 1:
            raise ValueError(f"num_proposals and d_model must be positive, got {num_proposals} and {d_model}")
        self.num_proposals = num_proposals
        self.d_model = d_model
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
        self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        self.query_position_embeddings = nn.Embedding(num_proposals, d_model) if mixed_selection else None

    def box_queries(self, box_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query_position, content)`` ``[B, N, C]`` each, from boxes in logit space ``[B, N, 4]``
        (their sine embedding through ``pos_trans`` and ``pos_trans_norm``)."""
        embedded = box_sine_embedding(box_logits.sigmoid(), self.d_model // 2, order="xy")
        query_position, content = self.pos_trans_norm(self.pos_trans(embedded)).split(self.d_model, dim=2)
        return query_position, content

    def box_positions(self, box_logits: torch.Tensor) -> torch.Tensor:
        """The query positions ``[B, N, C]`` of boxes in logit space ``[B, N, 4]`` (e.g. denoising queries)."""
        return self.box_queries(box_logits)[0]

    def forward(self, memory: torch.Tensor, features: MultiScaleFeatures, proposal_heads: tuple[nn.Module, nn.Module] | None = None) -> SelectedQueries:
        """memory ``[B, S, C]``; proposal_heads: (class head, box head) that score the proposals."""
        if proposal_heads is None:
            raise ValueError("TwoStageProposals needs proposal_heads (class head, box head): the decoder must hold decoder_layers + 1 heads")
        class_head, box_head = proposal_heads
        masked, proposals = encoder_output_proposals(memory, features.padding_mask, features.spatial_shapes_list)
        object_queries = self.enc_output_norm(self.enc_output(masked))
        enc_outputs_class = class_head(object_queries)
        enc_outputs_coord_logits = box_head(object_queries) + proposals
        top_logits, _ = select_top_proposals(enc_outputs_class, enc_outputs_coord_logits, self.num_proposals)
        query_position, target = self.box_queries(top_logits)
        if self.query_position_embeddings is not None:
            target = self.query_position_embeddings.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return SelectedQueries(target, top_logits.sigmoid(), query_position, enc_outputs_class, enc_outputs_coord_logits)
