"""The multi-scale input of a deformable transformer: backbone maps projected to ``d_model``, extra
strided levels, padding masks, position embeddings with level embeddings, all flattened level by level."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from detr_blocks.valid_ratio import valid_ratios as compute_valid_ratios
from models.backbones import BackboneWithPositions, mask_to_size


class MultiScaleFeatures(NamedTuple):
    """Flattened multi-scale features (S = Σ H_l·W_l tokens, levels in order, each row-major).

    source ``[B, S, C]``; padding_mask bool ``[B, S]`` (True = padding); position ``[B, S, C]``
    (position + level embedding); spatial_shapes int64 ``[L, 2]`` (H, W) and the same as python
    ints in spatial_shapes_list; level_start_index int64 ``[L]``; valid_ratios ``[B, L, 2]``.
    """

    source: torch.Tensor
    padding_mask: torch.Tensor
    position: torch.Tensor
    spatial_shapes: torch.Tensor
    spatial_shapes_list: list[tuple[int, int]]
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor


def input_projections(channels: list[int], d_model: int, num_levels: int) -> nn.ModuleList:
    """1x1 conv + GroupNorm(32) per backbone level; 3x3 stride-2 conv + GroupNorm(32) per extra level
    (the first from the last backbone map, the next ones from the previous extra level). Xavier init."""
    if num_levels < len(channels):
        raise ValueError(f"num_levels ({num_levels}) must be at least the number of backbone maps ({len(channels)})")
    projections = [nn.Sequential(nn.Conv2d(width, d_model, kernel_size=1), nn.GroupNorm(32, d_model)) for width in channels]
    in_channels = channels[-1]
    for _ in range(num_levels - len(channels)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d_model)))
        in_channels = d_model
    for projection in projections:
        nn.init.xavier_uniform_(projection[0].weight, gain=1)
        nn.init.constant_(projection[0].bias, 0)
    return nn.ModuleList(projections)


def project_levels(projections: nn.ModuleList, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """``projections[l](maps[l])`` for every map, then the extra levels: the first extra projection
    applied to the last map, each next one to the previous extra level. Returns
    ``len(projections)`` maps ``[B, C, H_l, W_l]``."""
    sources = [projection(feature) for projection, feature in zip(projections, maps)]
    for level in range(len(maps), len(projections)):
        sources.append(projections[level](maps[-1] if level == len(maps) else sources[-1]))
    return sources


def flatten_levels(sources: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """Maps ``[B, C, H_l, W_l]`` → ``(tokens [B, S, C] level by level, each row-major; (H_l, W_l)
    per level; the same as int64 [L, 2]; level_start_index int64 [L])``."""
    spatial_shapes_list = [tuple(source.shape[-2:]) for source in sources]  # symbolic under export: no int()
    flat = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
    spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=flat.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    return flat, spatial_shapes_list, spatial_shapes, level_start_index


def check_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_channels: int) -> torch.Tensor:
    """Validate a batch; return the pixel mask (1 = real pixel), all ones when None."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values must be a [B, {num_channels}, H, W] tensor, got {tuple(getattr(pixel_values, 'shape', ()))}")
    batch, _, height, width = pixel_values.shape
    if pixel_mask is None:
        return torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
    if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != (batch, height, width):
        raise ValueError(f"pixel_mask must be a [B={batch}, H={height}, W={width}] tensor (1 = real pixel, 0 = padding), got {tuple(getattr(pixel_mask, 'shape', ()))}")
    return pixel_mask


def multi_scale_features(
    backbone: BackboneWithPositions,
    input_proj: nn.ModuleList,
    level_embed: torch.Tensor,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor,
) -> MultiScaleFeatures:
    """Run the backbone and the projections (``len(input_proj)`` levels) and flatten.

    Args:
        backbone: returns per map ``(feature, mask True = real)`` and position embeddings.
        input_proj: one projection per level (see ``input_projections``).
        level_embed: ``[L, C]``, added to every position of its level.
        pixel_values: ``[B, C_in, H, W]``; pixel_mask: ``[B, H, W]``, 1 = real pixel.
    """
    features, positions = backbone(pixel_values, pixel_mask)
    sources = project_levels(input_proj, [feature for feature, _ in features])
    padding = [~mask for _, mask in features]
    positions = list(positions)
    for source in sources[len(features):]:
        mask = mask_to_size(pixel_mask, source.shape[-2:])
        padding.append(~mask)
        positions.append(backbone.position_embedding(~mask, dtype=source.dtype))

    source_flatten, spatial_shapes_list, spatial_shapes, level_start_index = flatten_levels(sources)
    padding_flatten = torch.cat([mask.flatten(1) for mask in padding], 1)
    position_flatten = torch.cat(
        [position.flatten(2).transpose(1, 2) + level_embed[level].view(1, 1, -1) for level, position in enumerate(positions)], 1
    )
    ratios = torch.stack([compute_valid_ratios(mask, dtype=source_flatten.dtype) for mask in padding], 1)
    return MultiScaleFeatures(source_flatten, padding_flatten, position_flatten, spatial_shapes, spatial_shapes_list, level_start_index, ratios)
