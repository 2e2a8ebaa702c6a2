"""A backbone body as DETR models use it: feature maps with their padding masks, and position
embeddings on every map."""

from __future__ import annotations

import torch
from torch import nn


def mask_to_size(pixel_mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resize of a ``[B, H, W]`` mask (1/True = real pixel) to ``size`` (h, w);
    returns bool ``[B, h, w]``, True = real pixel."""
    return nn.functional.interpolate(pixel_mask[None].float(), size=tuple(size)).to(torch.bool)[0]


class ConvEncoder(nn.Module):
    """Backbone body plus the padding mask at each output resolution.

    ``self.model`` holds the network, so its parameters are ``model.conv1.weight``, ``model.layer1...``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.intermediate_channel_sizes = list(model.channels)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Args: pixel_values ``[B, C, H, W]``; pixel_mask ``[B, H, W]`` (1 = real pixel, 0 = padding).

        Returns: ``[(feature [B, C_s, H_s, W_s], mask bool [B, H_s, W_s]), ...]`` (mask True = real pixel).
        """
        features = self.model(pixel_values)
        return [(feature, mask_to_size(pixel_mask, feature.shape[-2:])) for feature in features]


class BackboneWithPositions(nn.Module):
    """``conv_encoder`` followed by ``position_embedding`` on every feature map.

    ``position_embedding(padding_mask bool [B, H, W], dtype) -> [B, d_model, H, W]`` (True = padding,
    the ``detr_blocks`` convention).
    """

    def __init__(self, conv_encoder: ConvEncoder, position_embedding: nn.Module) -> None:
        super().__init__()
        self.conv_encoder = conv_encoder
        self.position_embedding = position_embedding

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        features = self.conv_encoder(pixel_values, pixel_mask)
        positions = [self.position_embedding(~mask, dtype=feature.dtype) for feature, mask in features]
        return features, positions
