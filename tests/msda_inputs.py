"""Random inputs for the msda op tests (shared by the op, module and CUDA tests)."""

from __future__ import annotations

import torch


def level_tensors(shapes: list[tuple[int, int]], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """spatial_shapes [L, 2] and level_start_index [L] for the given (H, W) levels."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def random_inputs(
    batch: int,
    shapes: list[tuple[int, int]],
    queries: int,
    heads: int,
    channels: int,
    points: int,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
    outside: float = 0.15,
) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights.

    Locations spread ``outside`` beyond [0, 1] on each side, so some corners fall off the map, and
    are nudged away from integer pixel positions, where the location gradient jumps.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tensors(shapes, device)
    total = int(spatial_shapes.prod(1).sum())
    levels = len(shapes)
    value = torch.randn(batch, total, heads, channels, generator=generator, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    locations = locations * (1 + 2 * outside) - outside
    # keep the pixel coordinate's fractional part inside [0.1, 0.9]
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)[None, None, None, :, None, :]
    pixel = locations * size - 0.5
    fraction = pixel - pixel.floor()
    pixel = pixel.floor() + 0.1 + 0.8 * fraction
    locations = (pixel + 0.5) / size
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    as_dtype = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return as_dtype(value), spatial_shapes, level_start_index, as_dtype(locations), as_dtype(weights)


def output_and_grads(fn, inputs, grad_output: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``fn`` (the op or the reference) on ``inputs``; return its output and the gradients for
    value, sampling_locations and attention_weights under ``grad_output``."""
    value, shapes, starts, locations, weights = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    output = fn(value, shapes, starts, locations, weights)
    return output.detach(), torch.autograd.grad(output, (value, locations, weights), grad_output)
