"""Pure-PyTorch multi-scale deformable attention: the test oracle and the fallback.

Built on ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, which is
exactly the sampling rule of the op: a normalized location (x, y) on level l reads pixel
coordinates (x * W_l - 0.5, y * H_l - 0.5) and corners outside the map read as zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msda.validation import check_inputs


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Multi-scale deformable attention in plain PyTorch.

    Args:
        value: ``[B, S, M, D]`` features of all levels, flattened level by level (row-major).
        spatial_shapes: int64 ``[L, 2]`` as (H_l, W_l).
        level_start_index: int64 ``[L]``, offset of each level in S.
        sampling_locations: ``[B, Q, M, L, P, 2]`` normalized (x, y).
        attention_weights: ``[B, Q, M, L, P]``.
        im2col_step: accepted for compatibility with the original op; unused.

    Returns:
        ``[B, Q, M * D]``.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    # under autocast the inputs may mix fp16/bf16 and fp32: compute in the widest of them
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    value, sampling_locations, attention_weights = value.to(dtype), sampling_locations.to(dtype), attention_weights.to(dtype)
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    output = value.new_zeros(batch * heads, channels, queries)
    if batch == 0 or queries == 0:
        return output.view(batch, heads * channels, queries).transpose(1, 2)
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        start = int(level_start_index[level])
        # [B, H*W, M, D] -> [B*M, D, H, W]
        level_value = value[:, start : start + height * width].permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        output = output + (sampled * level_weights).sum(-1)
    # [B*M, D, Q] -> [B, Q, M*D]
    return output.view(batch, heads * channels, queries).transpose(1, 2).contiguous()
