"""Input checks shared by the compiled op and the reference.

Every message names the offending argument and what was expected, so a wrong call fails here
instead of reading out of bounds inside a kernel.
"""

from __future__ import annotations

import torch

INDEX_DTYPES = (torch.int64, torch.int32)  # for spatial_shapes and level_start_index; both give the same results
INT64_MAX = 2**63 - 1  # the kernels index every tensor with int64 offsets


def _is_tracing() -> bool:
    """True under torch.compile / torch.export / jit tracing, where tensor data is not available."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def autocast_active(device: torch.device) -> bool:
    """True when autocast is on for ``device``'s type (only CPU and CUDA have autocast here)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def _has_data(tensor: torch.Tensor) -> bool:
    if tensor.device.type == "meta":
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake

        return not is_fake(tensor)
    except ImportError:  # pragma: no cover - very old torch
        return True


def check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the op's inputs disagree."""
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step < 1:
        raise ValueError(f"im2col_step must be a positive int, got {im2col_step!r}")

    expected_ranks = {
        "value": (4, "[B, S, M, D]"),
        "spatial_shapes": (2, "[L, 2]"),
        "level_start_index": (1, "[L]"),
        "sampling_locations": (6, "[B, Q, M, L, P, 2]"),
        "attention_weights": (5, "[B, Q, M, L, P]"),
    }
    for name, (rank, layout) in expected_ranks.items():
        if named[name].dim() != rank:
            raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(named[name].shape)}")

    for name in ("value", "sampling_locations", "attention_weights"):
        if not named[name].is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {named[name].dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype not in INDEX_DTYPES:
            raise TypeError(f"{name} must be int64 or int32, got {named[name].dtype}")

    device = value.device
    for name, tensor in named.items():
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but value is on {device}; all inputs must share a device")

    if not autocast_active(device):
        for name in ("sampling_locations", "attention_weights"):
            if named[name].dtype != value.dtype:
                raise TypeError(f"{name} has dtype {named[name].dtype} but value has {value.dtype}; they must match")

    batch, total, heads, channels = value.shape
    levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape [L, 2] as (H, W), got {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != levels:
        raise ValueError(f"level_start_index must have L={levels} entries (one per level of spatial_shapes), got {level_start_index.shape[0]}")
    loc_shape = tuple(sampling_locations.shape)
    if loc_shape[0] != batch or loc_shape[2] != heads or loc_shape[3] != levels or loc_shape[5] != 2:
        raise ValueError(
            f"sampling_locations must have shape [B={batch}, Q, M={heads}, L={levels}, P, 2], got {loc_shape}"
        )
    queries, points = loc_shape[1], loc_shape[4]
    weight_shape = tuple(attention_weights.shape)
    if weight_shape != (batch, queries, heads, levels, points):
        raise ValueError(
            f"attention_weights must have shape [B, Q, M, L, P] = {(batch, queries, heads, levels, points)}, got {weight_shape}"
        )

    output_elements = batch * queries * heads * channels
    if output_elements > INT64_MAX:
        raise ValueError(
            f"sampling_locations (B={batch}, Q={queries}) and value (M={heads}, D={channels}) give an output "
            f"[B, Q, M*D] of {output_elements} elements, more than 2^63 - 1 (int64 indexing)"
        )

    if _is_tracing() or not (_has_data(spatial_shapes) and _has_data(level_start_index)):
        return
    shapes = spatial_shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must hold positive (H, W) per level, got {shapes}")
    _check_level_sizes(shapes)
    areas = [h * w for h, w in shapes]
    if sum(areas) != total:
        raise ValueError(f"spatial_shapes areas sum to {sum(areas)} but value has S={total} positions (dim 1)")
    starts = [0]
    for area in areas[:-1]:
        starts.append(starts[-1] + area)
    if level_start_index.tolist() != starts:
        raise ValueError(f"level_start_index must be {starts} for spatial_shapes {shapes}, got {level_start_index.tolist()}")


def _check_level_sizes(shapes: list[list[int]]) -> None:
    """Raise ``ValueError`` naming spatial_shapes when a level's H*W, or the sum of them, passes
    2^63 - 1: the compiled kernels would index such maps with overflowed int64 offsets."""
    total = 0
    for level, (height, width) in enumerate(shapes):
        if height * width > INT64_MAX:
            raise ValueError(
                f"spatial_shapes[{level}] = ({height}, {width}) has H*W = {height * width} positions, more than "
                "2^63 - 1 (int64 indexing)"
            )
        total += height * width
        if total > INT64_MAX:
            raise ValueError(f"spatial_shapes areas up to level {level} sum to {total} positions, more than 2^63 - 1 (int64 indexing)")
