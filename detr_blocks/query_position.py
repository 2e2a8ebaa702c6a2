"""The query positions each decoder layer receives: the decoder's query-position policy.

``DeformableDecoder`` calls its policy before every layer::

    position = query_position(index, hidden_states, level_points, position_embeddings)

with ``level_points`` ``[B, Q, L, 2 or 4]`` the current reference points scaled by the valid ratios
(what the layer's cross-attention samples around) and ``position_embeddings`` ``[B, Q, C]`` or None
(what the decoder was called with). It returns ``[B, Q, C]`` or None.

Policies:
    ``InputQueryPosition``: the position embeddings passed to the decoder, at every layer
        (Deformable DETR; the default).
    ``BoxQueryPosition``: "conditional query positions", recomputed at every layer from the current
        reference boxes: ``mlp(box_sine_embedding(level_points[:, :, 0]))`` (DINO's
        ``ref_point_head``).
    ``BoxMLPQueryPosition``: the same recomputation without the sine embedding,
        ``mlp(level_points[:, :, 0])`` on the box coordinates themselves (RT-DETR's
        ``query_pos_head``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_blocks.mlp import MLP
from detr_blocks.position_embedding import interleave_sin_cos, sine_frequencies


def box_sine_embedding(
    boxes: torch.Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    *,
    order: str = "yx",
) -> torch.Tensor:
    """Sine embedding of normalized points or boxes, each coordinate with F channels: the one sine
    embedding of boxes (``SinePositionEmbedding`` is the one of feature-map pixels).

    Coordinates are multiplied by ``scale`` and divided by ``temperature ** (2 * (i // 2) / F)``;
    channel pairs are (sin, cos), interleaved. Block order: ``order="yx"`` gives (y, x) for points
    and (y, x, w, h) for boxes, as DINO's conditional query positions (F = 128 there);
    ``order="xy"`` gives (x, y[, w, h]), as Deformable DETR's two-stage proposals (of
    ``sigmoid(proposal logits)``).

    Args:
        boxes: ``[..., 2]`` (x, y) or ``[..., 4]`` (cx, cy, w, h), normalized.
        num_pos_feats: F, channels per coordinate (positive, even).
        temperature: base of the frequency ladder.
        scale: multiplies the coordinates.
        order: ``"yx"`` or ``"xy"``, the order of the first two blocks.

    Returns:
        ``[..., 2F]`` or ``[..., 4F]``, dtype of ``boxes``.
    """
    if not isinstance(boxes, torch.Tensor) or boxes.dim() < 1 or boxes.shape[-1] not in (2, 4):
        raise ValueError(f"boxes must have shape [..., 2] or [..., 4], got {tuple(getattr(boxes, 'shape', ()))}")
    if not isinstance(num_pos_feats, int) or num_pos_feats < 2 or num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be a positive even int, got {num_pos_feats!r}")
    if order not in ("yx", "xy"):
        raise ValueError(f"order must be 'yx' or 'xy', got {order!r}")
    divisors = sine_frequencies(num_pos_feats, temperature, boxes.dtype, boxes.device)
    embedded = interleave_sin_cos(boxes[..., None] * scale / divisors)  # [..., 2|4, F]
    if order == "xy":
        return embedded.flatten(-2)
    blocks = [1, 0] if boxes.shape[-1] == 2 else [1, 0, 2, 3]
    return embedded[..., blocks, :].flatten(-2)


class InputQueryPosition(nn.Module):
    """Returns the position embeddings the decoder was called with, at every layer."""

    def forward(
        self, index: int, hidden_states: torch.Tensor, level_points: torch.Tensor, position_embeddings: torch.Tensor | None
    ) -> torch.Tensor | None:
        return position_embeddings


class BoxQueryPosition(nn.Module):
    """Conditional query positions: ``mlp(box_sine_embedding(level_points[:, :, 0], F))``.

    The embedded reference is the one scaled by level 0's valid ratios, as DINO's decoder does;
    the decoder's own ``position_embeddings`` argument is ignored.

    Args:
        d_model: C, the output width (and the MLP's hidden width).
        ref_dim: 4 (boxes) or 2 (points), the reference points' last dimension.
        num_pos_feats: F per coordinate; default ``d_model // 2`` (so a box embeds to 2C,
            DINO's 512 for C = 256).
        temperature, scale: of ``box_sine_embedding``.
        num_layers: of the MLP (2 in DINO: Linear, ReLU, Linear).

    Parameters: ``mlp.layers.{i}`` (DINO's ``decoder.ref_point_head.layers.{i}``).
    """

    def __init__(
        self,
        d_model: int = 256,
        *,
        ref_dim: int = 4,
        num_pos_feats: int | None = None,
        temperature: float = 10000.0,
        scale: float = 2 * math.pi,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model < 2:
            raise ValueError(f"d_model must be an int >= 2, got {d_model!r}")
        if ref_dim not in (2, 4):
            raise ValueError(f"ref_dim must be 2 (points) or 4 (boxes), got {ref_dim!r}")
        num_pos_feats = d_model // 2 if num_pos_feats is None else num_pos_feats
        if not isinstance(num_pos_feats, int) or num_pos_feats < 2 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even int, got {num_pos_feats!r}")
        self.ref_dim, self.num_pos_feats, self.temperature, self.scale = ref_dim, num_pos_feats, temperature, scale
        self.mlp = MLP(ref_dim * num_pos_feats, d_model, d_model, num_layers)

    def forward(
        self, index: int, hidden_states: torch.Tensor, level_points: torch.Tensor, position_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """``level_points`` ``[B, Q, L, ref_dim]`` → ``[B, Q, C]``."""
        if level_points.dim() != 4 or level_points.shape[-1] != self.ref_dim:
            raise ValueError(f"reference_points must have {self.ref_dim} coordinates for BoxQueryPosition(ref_dim={self.ref_dim}), got level points {tuple(level_points.shape)}")
        return self.mlp(box_sine_embedding(level_points[:, :, 0], self.num_pos_feats, self.temperature, self.scale))


class BoxMLPQueryPosition(nn.Module):
    """Query positions from the current reference boxes by an MLP on their coordinates:
    ``mlp(level_points[:, :, 0])`` (RT-DETR's ``query_pos_head``: 4 → 2C → C, ReLU between).

    As ``BoxQueryPosition``, the reference is the one scaled by level 0's valid ratios (the
    reference itself when there is no padding, RT-DETR's case); the decoder's own
    ``position_embeddings`` argument is ignored.

    Args:
        d_model: C, the output width.
        ref_dim: 4 (boxes) or 2 (points), the reference points' last dimension.
        hidden_dim: the MLP's hidden width; default ``2 · d_model``.
        num_layers: of the MLP (RT-DETR: 2).

    Parameters: ``mlp.layers.{i}`` (``transformers``' ``decoder.query_pos_head.layers.{i}``).
    """

    def __init__(self, d_model: int = 256, *, ref_dim: int = 4, hidden_dim: int | None = None, num_layers: int = 2) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if ref_dim not in (2, 4):
            raise ValueError(f"ref_dim must be 2 (points) or 4 (boxes), got {ref_dim!r}")
        hidden_dim = 2 * d_model if hidden_dim is None else hidden_dim
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        self.ref_dim = ref_dim
        self.mlp = MLP(ref_dim, hidden_dim, d_model, num_layers)

    def forward(
        self, index: int, hidden_states: torch.Tensor, level_points: torch.Tensor, position_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """``level_points`` ``[B, Q, L, ref_dim]`` → ``[B, Q, C]``."""
        if level_points.dim() != 4 or level_points.shape[-1] != self.ref_dim:
            raise ValueError(f"reference_points must have {self.ref_dim} coordinates for BoxMLPQueryPosition(ref_dim={self.ref_dim}), got level points {tuple(level_points.shape)}")
        return self.mlp(level_points[:, :, 0])
