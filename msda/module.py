"""``MultiScaleDeformableAttention``: the attention module of Deformable DETR.

Parameter names, shapes and initialisation follow the paper's code, so its checkpoints (and the
Hugging Face ones, after renaming the surrounding keys) load unchanged.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from msda.op import ms_deform_attn
from msda.reference import ms_deform_attn_reference
from msda.validation import autocast_active


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` learned sampling points per head and level.

    Args:
        embed_dim: model width C; must be divisible by ``num_heads``.
        num_heads: M.
        num_levels: L, feature levels of the value.
        num_points: P, sampling points per head and level.
        im2col_step: passed to the op (compatibility only).
        use_reference: run the pure-PyTorch reference instead of the compiled op (ONNX export,
            debugging); the one documented way to pick the reference (``disable_custom_kernels=True``
            in a model config sets it; ``MSDA_FORCE_REFERENCE`` is deprecated).
        value_proj_ratio: ``value_proj`` maps to V = int(C · ratio) channels (mmcv's option; 1.0 in
            the paper); V must be divisible by ``num_heads``.

    Parameters: ``sampling_offsets`` Linear(C, M·L·P·2), ``attention_weights`` Linear(C, M·L·P),
    ``value_proj`` Linear(C, V), ``output_proj`` Linear(V, C).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        im2col_step: int = 64,
        use_reference: bool = False,
        value_proj_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        for name, number in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_levels", num_levels), ("num_points", num_points)):
            if not isinstance(number, int) or number < 1:
                raise ValueError(f"{name} must be a positive int, got {number!r}")
        if not isinstance(use_reference, bool):
            raise TypeError(f"use_reference must be a bool, got {type(use_reference).__name__}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if isinstance(value_proj_ratio, bool) or not isinstance(value_proj_ratio, (int, float)) or not value_proj_ratio > 0:
            raise ValueError(f"value_proj_ratio must be a positive number, got {value_proj_ratio!r}")
        value_dim = int(embed_dim * value_proj_ratio)
        if value_dim < num_heads or value_dim % num_heads != 0:
            raise ValueError(
                f"value_proj_ratio {value_proj_ratio} gives {value_dim} value channels (int(embed_dim * value_proj_ratio)), "
                f"which must be a positive multiple of num_heads ({num_heads})"
            )
        head_dim = value_dim // num_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn(f"head dim {head_dim} (value channels / num_heads) is not a power of 2; the kernels are fastest with powers of 2", stacklevel=2)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.use_reference = use_reference
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, value_dim)
        self.output_proj = nn.Linear(value_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: offsets start on a ring of directions, one per head,
        at distances 1..P; uniform attention; Xavier projections."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from queries to the multi-scale value.

        Args:
            query: ``[B, Q, C]`` (position embedding already added).
            reference_points: ``[B, Q, L, 2]`` normalized (x, y) points, or ``[B, Q, L, 4]``
                normalized (cx, cy, w, h) boxes, whose half size scales the offsets.
            value: ``[B, S, C]`` flattened multi-scale features (before ``value_proj``).
            spatial_shapes: int64 or int32 ``[L, 2]`` (H, W); level_start_index: int64 or int32 ``[L]``.
            value_padding_mask: bool ``[B, S]``, True where the position is padding (zeroed).

        Returns:
            ``[B, Q, C]``.
        """
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must have shape [B, Q, {self.embed_dim}], got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.embed_dim or value.shape[0] != query.shape[0]:
            raise ValueError(f"value must have shape [B={query.shape[0]}, S, {self.embed_dim}], got {tuple(value.shape)}")
        batch, queries, _ = query.shape
        total = value.shape[1]
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (batch, queries, self.num_levels) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                f"reference_points must have shape [B={batch}, Q={queries}, L={self.num_levels}, 2 or 4], got {tuple(reference_points.shape)}"
            )
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[0] != self.num_levels:
            raise ValueError(f"spatial_shapes must have shape [L={self.num_levels}, 2], got {tuple(spatial_shapes.shape)}")

        projected = self.value_proj(value)
        if value_padding_mask is not None:
            if value_padding_mask.shape != (batch, total):
                raise ValueError(f"value_padding_mask must have shape [B={batch}, S={total}], got {tuple(value_padding_mask.shape)}")
            projected = projected.masked_fill(value_padding_mask[..., None].bool(), 0.0)
        head_dim = self.value_dim // self.num_heads
        projected = projected.view(batch, total, self.num_heads, head_dim)

        levels, points = self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, queries, self.num_heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.num_heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, self.num_heads, levels, points)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            locations = reference_points[:, :, None, :, None, :2] + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5

        output = self._attend(projected, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output)

    def _attend(
        self,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        """Run the op (or the reference) on projected value ``[B, S, M, D]``; ``[B, Q, M*D]`` out."""
        attend = ms_deform_attn_reference if self.use_reference else ms_deform_attn
        if not autocast_active(value.device):
            # outside autocast the op wants one dtype; under autocast its rule casts to fp32
            sampling_locations = sampling_locations.to(value.dtype)
            attention_weights = attention_weights.to(value.dtype)
        return attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, self.im2col_step)
