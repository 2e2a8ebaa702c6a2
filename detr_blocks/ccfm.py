"""CCFM (cross-scale feature fusion, RT-DETR): a top-down FPN then a bottom-up PAN over L maps of C
channels, each fusion a ``CSPRepLayer`` on the concatenation of two maps.

With maps ``x_0 … x_{L−1}`` (finest first)::

    top-down, for i = L−2 … 0 (k = L−2−i):
        t_{i+1} = lateral_convs[k](t_{i+1})              # t_{L−1} starts as x_{L−1}; the lateral
                                                          # output replaces t_{i+1}
        t_i     = fpn_blocks[k](cat(upsample(t_{i+1} → size of x_i), x_i))
    bottom-up, for i = 1 … L−1 (k = i−1):
        p_0 = t_0
        p_i = pan_blocks[k](cat(downsample_convs[k](p_{i−1}), t_i))
    returns p_0 … p_{L−1}

The lateral convolution is 1x1 conv-BN-activation, the downsampling 3x3 stride-2 conv-BN-activation.
Upsampling, as the RT-DETR authors' code: nearest-neighbour ×2 when the finer map is exactly twice
the coarser (what ``transformers`` computes, and the only case it accepts), bilinear to the finer
map's size otherwise (input sizes not divisible by the coarsest stride). Names follow
``transformers``' ``RTDetrHybridEncoder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from detr_blocks.conv_norm import ConvNormLayer, check_channels
from detr_blocks.csp import CSPRepLayer


def upsample_to(feature_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, C, H, W]``: nearest ×2 when ``(H, W) == (2h, 2w)``, else bilinear
    (``align_corners=False``)."""
    height, width = feature_map.shape[-2:]
    if tuple(size) == (2 * height, 2 * width):
        return nn.functional.interpolate(feature_map, scale_factor=2.0, mode="nearest")
    return nn.functional.interpolate(feature_map, size=tuple(size), mode="bilinear")


class CCFM(nn.Module):
    """Args:
        num_levels: L ≥ 2 (RT-DETR: 3).
        channels: C of every map (RT-DETR: ``encoder_hidden_dim``, 256).
        num_blocks: RepVGG blocks per ``CSPRepLayer`` (RT-DETR: 3).
        expansion: hidden width of the ``CSPRepLayer`` as a fraction of C (``hidden_expansion``).
        activation: of every conv-BN and block; RT-DETR: ``"silu"`` (``activation_function``).
        eps: of the batch norms (``batch_norm_eps``).

    Submodules: ``lateral_convs``, ``fpn_blocks``, ``downsample_convs``, ``pan_blocks`` (L−1 each).
    """

    def __init__(
        self,
        num_levels: int = 3,
        channels: int = 256,
        *,
        num_blocks: int = 3,
        expansion: float = 1.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] | None = "silu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_channels(channels=channels)
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int ≥ 2, got {num_levels!r}")
        stages = range(num_levels - 1)

        def fusion() -> CSPRepLayer:
            return CSPRepLayer(2 * channels, channels, num_blocks=num_blocks, expansion=expansion, activation=activation, eps=eps)

        self.lateral_convs = nn.ModuleList(ConvNormLayer(channels, channels, 1, 1, activation=activation, eps=eps) for _ in stages)
        self.fpn_blocks = nn.ModuleList(fusion() for _ in stages)
        self.downsample_convs = nn.ModuleList(ConvNormLayer(channels, channels, 3, 2, activation=activation, eps=eps) for _ in stages)
        self.pan_blocks = nn.ModuleList(fusion() for _ in stages)
        self.num_levels = num_levels
        self.channels = channels

    def check_features(self, features: Sequence[torch.Tensor]) -> None:
        """``features`` must be L maps ``[B, C, H_l, W_l]`` of one batch size."""
        shapes = [tuple(getattr(f, "shape", ())) for f in features] if isinstance(features, (list, tuple)) else None
        if (
            shapes is None
            or len(shapes) != self.num_levels
            or any(len(s) != 4 or s[1] != self.channels or s[0] != shapes[0][0] for s in shapes)
        ):
            raise ValueError(f"features must be {self.num_levels} maps [B, {self.channels}, H_l, W_l] (finest first), got shapes {shapes}")

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args:
            features: L maps ``[B, C, H_l, W_l]``, finest first, each level half the size of the
                one before (rounded up, as stride-2 convolutions give).

        Returns:
            L fused maps, the shapes of ``features``.
        """
        self.check_features(features)
        top_down = [features[-1]]  # coarsest first while building
        for k, (lateral_conv, fpn_block) in enumerate(zip(self.lateral_convs, self.fpn_blocks)):
            finer = features[self.num_levels - 2 - k]
            coarse = lateral_conv(top_down[-1])
            top_down[-1] = coarse
            upsampled = upsample_to(coarse, finer.shape[-2:])
            top_down.append(fpn_block(torch.cat([upsampled, finer], dim=1)))
        top_down.reverse()
        outputs = [top_down[0]]
        for k, (downsample_conv, pan_block) in enumerate(zip(self.downsample_convs, self.pan_blocks)):
            outputs.append(pan_block(torch.cat([downsample_conv(outputs[-1]), top_down[k + 1]], dim=1)))
        return outputs
