"""Pure-PyTorch multi-scale deformable attention: the test oracle and the fallback.

Built on ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``, which is
exactly the sampling rule of the op: a normalized location (x, y) on level l reads pixel
coordinates (x * W_l - 0.5, y * H_l - 0.5) and corners outside the map read as zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msda.validation import _is_tracing, check_inputs


def level_sizes(spatial_shapes: torch.Tensor) -> list[tuple[int, int]]:
    """The (H, W) of every level as Python ints.

    The reference needs them to cut value into maps. Under ``torch.export`` with spatial_shapes as
    a tensor input their values are unknown; that raises a clear error here instead of a guard
    error from deep inside the tracer.
    """
    try:
        return [(int(height), int(width)) for height, width in spatial_shapes.tolist()]
    except Exception as error:
        if not _is_tracing():
            raise
        raise RuntimeError(
            "msda: the pure-PyTorch reference reads the values of spatial_shapes (the level sizes), which "
            "are not known while tracing with spatial_shapes as a tensor input. Call msda.ms_deform_attn "
            "(the registered op, which traces and exports with shapes as tensors) instead, or pass "
            f"spatial_shapes as a constant. ({type(error).__name__})"
        ) from error


def _starts(sizes: list[tuple[int, int]]) -> list[int]:
    starts = [0]
    for height, width in sizes[:-1]:
        starts.append(starts[-1] + height * width)
    return starts


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The widest floating dtype of the inputs (under autocast they may mix fp16/bf16 and fp32)."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


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
        spatial_shapes: int64 or int32 ``[L, 2]`` as (H_l, W_l).
        level_start_index: int64 or int32 ``[L]``, offset of each level in S.
        sampling_locations: ``[B, Q, M, L, P, 2]`` normalized (x, y).
        attention_weights: ``[B, Q, M, L, P]``.
        im2col_step: accepted for compatibility with the original op; unused.

    Returns:
        ``[B, Q, M * D]``.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    value, sampling_locations, attention_weights = value.to(dtype), sampling_locations.to(dtype), attention_weights.to(dtype)
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    output = value.new_zeros(batch * heads, channels, queries)
    if batch == 0 or queries == 0:
        return output.view(batch, heads * channels, queries).transpose(1, 2)
    sizes = level_sizes(spatial_shapes)
    for level, ((height, width), start) in enumerate(zip(sizes, _starts(sizes))):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        level_value = value[:, start : start + height * width].permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        output = output + (sampled * level_weights).sum(-1)
    # [B*M, D, Q] -> [B, Q, M*D]
    return output.view(batch, heads * channels, queries).transpose(1, 2).contiguous()


def ms_deform_attn_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`ms_deform_attn_reference` for value, sampling_locations, attention_weights.

    Written out with ``grid_sampler_2d_backward`` rather than autograd: it serves the backward op's
    fallback kernel, which runs below the autograd dispatch key, where no graph is recorded.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    batch, total, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    if tuple(grad_output.shape) != (batch, queries, heads * channels):
        raise ValueError(f"grad_output must have shape [B, Q, M*D] = {(batch, queries, heads * channels)}, got {tuple(grad_output.shape)}")
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # accumulate half types in fp32, as the kernels do
    work = [t.to(dtype) for t in (value, sampling_locations, attention_weights)]
    value_w, locations_w, weights_w = work
    grad_value = torch.zeros_like(value_w)
    grad_locations = torch.zeros_like(locations_w)
    grad_weights = torch.zeros_like(weights_w)
    if batch and queries and total:
        # [B, Q, M*D] -> [B*M, D, Q, 1]
        grad = grad_output.to(dtype).transpose(1, 2).reshape(batch * heads, channels, queries, 1)
        grids = 2 * locations_w - 1
        sizes = level_sizes(spatial_shapes)
        for level, ((height, width), start) in enumerate(zip(sizes, _starts(sizes))):
            area = height * width
            level_value = value_w[:, start : start + area].permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
            level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
            level_weights = weights_w[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
            sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            grad_level_weights = (grad * sampled).sum(1)  # [B*M, Q, P]
            grad_map, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                (grad * level_weights).contiguous(), level_value, level_grid, 0, 0, False, [True, True]
            )
            grad_value[:, start : start + area] = grad_map.reshape(batch, heads, channels, area).permute(0, 3, 1, 2)
            grad_locations[:, :, :, level] = 2 * grad_grid.reshape(batch, heads, queries, points, 2).transpose(1, 2)
            grad_weights[:, :, :, level] = grad_level_weights.reshape(batch, heads, queries, points).transpose(1, 2)
    return grad_value.to(value.dtype), grad_locations.to(sampling_locations.dtype), grad_weights.to(attention_weights.dtype)
