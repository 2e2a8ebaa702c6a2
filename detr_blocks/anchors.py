"""``grid_anchors``: RT-DETR's fixed anchor boxes, one per pixel of every level, for query selection.

At level l of size (H_l, W_l) the pixel (x, y) gets the box ``((x + 0.5)/W_l, (y + 0.5)/H_l,
grid_size·2^l, grid_size·2^l)`` (normalized cx, cy, w, h). An anchor is valid when all four numbers
lie strictly inside ``(eps, 1 − eps)``. Anchors are returned in logit space (``log(a / (1 − a))``),
the invalid ones set to the dtype's largest finite value; the encoder's box head adds its
prediction to them, and invalid pixels are zeroed in the memory with ``valid_mask``.

``encoder_output_proposals`` (two-stage Deformable DETR) is the padded-image form of the same grid:
it normalizes centres by each image's real size and marks invalid proposals with +inf. RT-DETR's
anchors ignore padding (its images are resized to a fixed size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detr_blocks._common import shape_list


def grid_anchors(
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    grid_size: float = 0.05,
    eps: float = 0.01,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor boxes of every pixel of every level, levels flattened in order, each row-major.

    Args:
        spatial_shapes: ``[L, 2]`` (H_l, W_l) per level (tensor or list), finest first.
        grid_size: width and height of a level-0 anchor (normalized), doubling per level.
        eps: margin of the valid range ``(eps, 1 − eps)``, in [0, 0.5).
        dtype, device: of the anchors.

    Returns:
        ``(anchors [1, S, 4], valid_mask bool [1, S, 1])`` with S = Σ H_l·W_l; anchors are
        (cx, cy, w, h) logits, ``torch.finfo(dtype).max`` where invalid.
    """
    shapes = shape_list(spatial_shapes)
    if not isinstance(grid_size, (int, float)) or not grid_size > 0:
        raise ValueError(f"grid_size must be a positive number, got {grid_size!r}")
    if not isinstance(eps, (int, float)) or not 0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    per_level = []
    for level, (height, width) in enumerate(shapes):
        ys = (torch.arange(height, device=device).to(dtype) + 0.5) / height
        xs = (torch.arange(width, device=device).to(dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        size = torch.full_like(grid_x, grid_size * 2.0**level)
        per_level.append(torch.stack([grid_x, grid_y, size, size], -1).reshape(-1, 4))
    anchors = torch.cat(per_level)[None]
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    logits = torch.log(anchors / (1 - anchors))
    return logits.masked_fill(~valid_mask, torch.finfo(dtype).max), valid_mask
