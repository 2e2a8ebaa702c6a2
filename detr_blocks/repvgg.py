"""``RepVggBlock`` (Ding et al., 2021): a 3x3 and a 1x1 conv-BN branch summed, then an activation.

In training the two branches are separate; for inference ``fuse()`` folds them into one 3x3
convolution with bias (each batch norm folded into its convolution with its running statistics,
the 1x1 kernel zero-padded to 3x3 and added), which computes the same function in eval mode.
``fuse_repvgg_blocks(model)`` does it for every block inside a model. Names follow ``transformers``'
``RTDetrRepVggBlock``: ``conv1`` (3x3), ``conv2`` (1x1), each a ``ConvNormLayer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_blocks.activation import get_activation
from detr_blocks.conv_norm import ConvNormLayer, check_channels


def fold_conv_norm(layer: ConvNormLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``[O, I, k, k]`` and bias ``[O]`` of one convolution equal to ``layer.norm(layer.conv(x))``
    with the norm's running statistics (its eval-mode function)."""
    norm = layer.norm
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return layer.conv.weight * scale.view(-1, 1, 1, 1), norm.bias - norm.running_mean * scale


class FusedRepVggBlock(nn.Module):
    """A fused ``RepVggBlock``: ``activation(conv(x))``, one 3x3 convolution with bias."""

    def __init__(self, conv: nn.Conv2d, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(hidden_state))


class RepVggBlock(nn.Module):
    """``activation(bn(conv3x3(x)) + bn(conv1x1(x)))`` with ``channels`` in and out.

    Args:
        channels: C.
        activation: a name of ``detr_blocks.ACTIVATIONS``, a callable, or None (identity);
            RT-DETR: ``"silu"``.
        eps: of the batch norms.

    ``forward``: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, *, activation: str | Callable[[torch.Tensor], torch.Tensor] | None = "silu", eps: float = 1e-5) -> None:
        super().__init__()
        check_channels(channels=channels)
        self.conv1 = ConvNormLayer(channels, channels, 3, 1, padding=1, eps=eps)
        self.conv2 = ConvNormLayer(channels, channels, 1, 1, padding=0, eps=eps)
        self.activation = nn.Identity() if activation is None else get_activation(activation)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv1(hidden_state) + self.conv2(hidden_state))

    @torch.no_grad()
    def fuse(self) -> FusedRepVggBlock:
        """One 3x3 convolution (with bias) plus the activation, equal to this block in eval mode
        (the batch norms' running statistics are folded in). The block itself is unchanged."""
        weight3, bias3 = fold_conv_norm(self.conv1)
        weight1, bias1 = fold_conv_norm(self.conv2)
        conv = nn.Conv2d(weight3.shape[1], weight3.shape[0], 3, 1, 1, bias=True).to(weight3)
        conv.weight.copy_(weight3 + nn.functional.pad(weight1, [1, 1, 1, 1]))
        conv.bias.copy_(bias3 + bias1)
        return FusedRepVggBlock(conv, self.activation)


def fuse_repvgg_blocks(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``RepVggBlock`` inside ``module`` (itself excluded) by its ``fuse()``;
    for inference only (the result has no batch norms to train). Returns ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    for name, child in module.named_children():
        if isinstance(child, RepVggBlock):
            setattr(module, name, child.fuse())
        else:
            fuse_repvgg_blocks(child)
    return module
