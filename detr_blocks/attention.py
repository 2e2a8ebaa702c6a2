"""``MultiheadSelfAttention``: the decoder's self-attention among object queries.

Position embeddings are added to the input of the query and key projections but not to the value
projection, as in the paper. Parameter names follow Hugging Face's Deformable DETR (``q_proj``,
``k_proj``, ``v_proj``, ``out_proj``); the paper's ``nn.MultiheadAttention`` keeps the three input
projections stacked in ``in_proj_weight`` / ``in_proj_bias`` (q, k, v order) and its output
projection in ``out_proj``, so its checkpoints map by splitting that tensor in three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadSelfAttention(nn.Module):
    """Scaled dot-product multi-head self-attention.

    Args:
        embed_dim: C, divisible by ``num_heads``.
        num_heads: number of heads.
        dropout: dropout on the attention probabilities (training only).
        bias: whether the four projections have biases.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or not isinstance(num_heads, int) or num_heads < 1 or embed_dim < 1:
            raise ValueError(f"embed_dim and num_heads must be positive ints, got {embed_dim!r} and {num_heads!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases (what ``nn.MultiheadAttention`` does)."""
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hidden_states: ``[B, Q, C]``.
            position_embeddings: ``[B, Q, C]`` or ``[Q, C]``, added to queries and keys only.
            attention_mask: bool, True = may NOT attend: ``[B, Q]`` (key padding) or ``[Q, Q]`` /
                ``[B, Q, Q]`` (per query and key). A query whose keys are all masked gets NaN.

        Returns:
            ``[B, Q, C]``.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.embed_dim:
            raise ValueError(f"hidden_states must have shape [B, Q, {self.embed_dim}], got {tuple(hidden_states.shape)}")
        batch, length, _ = hidden_states.shape
        query_key_input = hidden_states
        if position_embeddings is not None:
            if position_embeddings.shape[-2:] != hidden_states.shape[-2:]:
                raise ValueError(f"position_embeddings must have shape [B, {length}, {self.embed_dim}], got {tuple(position_embeddings.shape)}")
            query_key_input = hidden_states + position_embeddings
        query = self._split_heads(self.q_proj(query_key_input))
        key = self._split_heads(self.k_proj(query_key_input))
        value = self._split_heads(self.v_proj(hidden_states))

        mask = None
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                raise ValueError(f"attention_mask must be bool (True = masked), got {attention_mask.dtype}")
            if attention_mask.shape == (batch, length):
                mask = attention_mask[:, None, None, :]
            elif attention_mask.shape in ((length, length), (batch, length, length)):
                mask = attention_mask if attention_mask.dim() == 2 else attention_mask[:, None]
            else:
                raise ValueError(f"attention_mask must have shape [B, Q], [Q, Q] or [B, Q, Q] with B={batch}, Q={length}, got {tuple(attention_mask.shape)}")
            mask = ~mask  # scaled_dot_product_attention keeps the True entries

        dropout = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(attended)
