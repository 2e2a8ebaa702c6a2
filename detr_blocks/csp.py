"""``CSPRepLayer``: a cross-stage-partial layer of RepVGG blocks, the fusion block of RT-DETR's CCFM.

``conv3(bottlenecks(conv1(x)) + conv2(x))``: two 1x1 conv-BN-activation branches of
``hidden = out_channels · expansion`` channels, one of them through ``num_blocks`` RepVGG blocks,
summed, then a 1x1 conv-BN-activation to ``out_channels`` (``nn.Identity`` when hidden equals out).
Names follow ``transformers``' ``RTDetrCSPRepLayer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_blocks.conv_norm import ConvNormLayer, check_channels
from detr_blocks.repvgg import RepVggBlock


class CSPRepLayer(nn.Module):
    """Args:
        in_channels, out_channels: of the layer (RT-DETR: 2C → C).
        num_blocks: RepVGG blocks on the first branch (RT-DETR: 3).
        expansion: hidden width as a fraction of ``out_channels`` (RT-DETR: ``hidden_expansion``).
        activation: of every conv-BN and block; a name, a callable or None; RT-DETR: ``"silu"``.
        eps: of the batch norms.

    ``forward``: ``[B, in_channels, H, W]`` → ``[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_blocks: int = 3,
        expansion: float = 1.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] | None = "silu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, out_channels=out_channels)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
        if not isinstance(expansion, (int, float)) or int(out_channels * expansion) < 1:
            raise ValueError(f"expansion must give at least one hidden channel (out_channels · expansion ≥ 1), got {expansion!r}")
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, activation=activation, eps=eps)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, activation=activation, eps=eps)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, activation=activation, eps=eps) for _ in range(num_blocks)])
        self.conv3 = nn.Identity() if hidden == out_channels else ConvNormLayer(hidden, out_channels, 1, 1, activation=activation, eps=eps)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(hidden_state)) + self.conv2(hidden_state))
