"""RT-DETR's hybrid encoder: AIFI on some levels (usually only the coarsest), then CCFM over all.

``HybridEncoder`` is a ``CCFM`` whose input maps at ``encode_indices`` first go through their own
``AIFI`` (held in ``encoder``, in the order of ``encode_indices``). Its state dict has ``transformers``'
``RTDetrHybridEncoder`` names (``encoder.{i}.layers.{j}...``, ``lateral_convs``, ``fpn_blocks``,
``downsample_convs``, ``pan_blocks``), so that module's weights load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from detr_blocks.ccfm import CCFM


class HybridEncoder(CCFM):
    """Args:
        encoders: one module per index of ``encode_indices``, each ``[B, C, H, W] -> [B, C, H, W]``
            (an ``AIFI``); may be empty (CCFM only, ``encoder_layers=0``).
        encode_indices: the levels they apply to (RT-DETR: ``encode_proj_layers``, ``[2]``: the
            coarsest of three); distinct, in ``[0, num_levels)``.
        num_levels, channels, num_blocks, expansion, activation, eps: of the ``CCFM``.

    ``forward(features)``: L maps ``[B, C, H_l, W_l]`` (finest first) → L fused maps, same shapes.
    """

    def __init__(
        self,
        encoders: Iterable[nn.Module],
        encode_indices: Sequence[int] = (2,),
        num_levels: int = 3,
        channels: int = 256,
        *,
        num_blocks: int = 3,
        expansion: float = 1.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] | None = "silu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__(num_levels, channels, num_blocks=num_blocks, expansion=expansion, activation=activation, eps=eps)
        self.encoder = nn.ModuleList(encoders)
        indices = tuple(encode_indices)
        if len(indices) != len(self.encoder):
            raise ValueError(f"encode_indices must name one level per encoder ({len(self.encoder)}), got {list(indices)}")
        if len(set(indices)) != len(indices) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_levels for i in indices):
            raise ValueError(f"encode_indices must be distinct ints in [0, {num_levels}), got {list(indices)}")
        self.encode_indices = indices

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.check_features(features)
        features = list(features)
        for index, encoder in zip(self.encode_indices, self.encoder):
            features[index] = encoder(features[index])
        return super().forward(features)
