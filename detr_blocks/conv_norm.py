"""``ConvNormLayer``: convolution (no bias), batch norm, optional activation — the unit of RT-DETR's
CNN fusion (CCFM) and its blocks. Names follow ``transformers``' ``RTDetrConvNormLayer``:
``conv``, ``norm`` (and ``activation``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_blocks.activation import get_activation


def check_channels(**channels: int) -> None:
    """Every given channel count must be a positive int (the error names the argument)."""
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class ConvNormLayer(nn.Module):
    """``activation(norm(conv(x)))``.

    Args:
        in_channels, out_channels: of the convolution.
        kernel_size: square kernel; stride: its stride.
        padding: default ``(kernel_size − 1) // 2`` (same size at stride 1).
        activation: None (identity), a name of ``detr_blocks.ACTIVATIONS`` or a callable.
        eps: of the batch norm.

    ``forward``: ``[B, in_channels, H, W]`` → ``[B, out_channels, H', W']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        padding: int | None = None,
        activation: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2 if padding is None else padding, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps)
        self.activation = nn.Identity() if activation is None else get_activation(activation)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_state)))
