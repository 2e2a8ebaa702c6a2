"""2-d position embeddings of a feature map, computed from its padding mask.

Mask convention (everywhere in ``detr_blocks``): ``True`` marks padding, ``False`` a real pixel,
as in the paper's code. (Hugging Face's ``pixel_mask`` is the opposite: pass ``~pixel_mask.bool()``.)
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_mask(mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
        raise ValueError(f"mask must be a [B, H, W] tensor (True = padding), got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = padding), got dtype {mask.dtype}")


def interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """``[..., F]`` angles → ``[..., F]`` with sin of the even and cos of the odd channels, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_frequencies(num_feats: int, temperature: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[num_feats]`` divisors ``temperature ** (2 * (i // 2) / num_feats)`` (pairs share a frequency)."""
    index = torch.arange(num_feats, dtype=dtype, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


class SinePositionEmbedding(nn.Module):
    """Sine/cosine embedding of the (y, x) position of every real pixel.

    With ``normalize=True`` (Deformable DETR) positions are the cumulative count of real pixels
    along each axis, shifted by ``-offset`` and divided by the count of real pixels (+``eps``), times
    ``scale``; so a padded image gets the same embedding on its real pixels as the unpadded image.

    Args:
        num_pos_feats: F, channels per axis; the output has 2F channels (y first, then x).
        temperature: base of the frequency ladder.
        normalize: normalize positions to ``[0, scale]`` by the number of real pixels.
        scale: used when ``normalize``; default 2π.
        offset: subtracted from the cumulative count before normalizing (0.5: pixel centres).
        eps: added to the normalizer.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
        offset: float = 0.5,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not isinstance(num_pos_feats, int) or num_pos_feats < 2 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even int, got {num_pos_feats!r}")
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True; pass normalize=True or scale=None")
        self.num_pos_feats = num_pos_feats
        self.temperature = float(temperature)
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else float(scale)
        self.offset = float(offset)
        self.eps = float(eps)

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Args:
            mask: bool ``[B, H, W]``, True = padding.
            dtype: dtype of the result (computed in float32 or higher, then cast).

        Returns:
            ``[B, 2F, H, W]``.
        """
        _check_mask(mask)
        compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        real = ~mask
        y = real.cumsum(1, dtype=compute_dtype)
        x = real.cumsum(2, dtype=compute_dtype)
        if self.normalize:
            y = (y - self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x - self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        divisors = sine_frequencies(self.num_pos_feats, self.temperature, compute_dtype, mask.device)
        pos_y = interleave_sin_cos(y[..., None] / divisors)
        pos_x = interleave_sin_cos(x[..., None] / divisors)
        return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2).to(dtype)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, scale={self.scale:.4f}"


class LearnedPositionEmbedding(nn.Module):
    """Learned absolute embedding: a row table and a column table, concatenated (x first, then y).

    Positions are absolute pixel indices, so the real pixels of a padded image get the same
    embedding as in the unpadded image; the mask only supplies the shape.

    Args:
        num_pos_feats: F, channels per axis; the output has 2F channels.
        max_size: the largest H and W supported (50 in the paper's code).

    Parameters: ``row_embeddings`` Embedding(max_size, F), ``column_embeddings`` Embedding(max_size, F).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        if not isinstance(num_pos_feats, int) or num_pos_feats < 1:
            raise ValueError(f"num_pos_feats must be a positive int, got {num_pos_feats!r}")
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.num_pos_feats = num_pos_feats
        self.max_size = max_size
        self.row_embeddings = nn.Embedding(max_size, num_pos_feats)
        self.column_embeddings = nn.Embedding(max_size, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embeddings.weight)
        nn.init.uniform_(self.column_embeddings.weight)

    def forward(self, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Args:
            mask: bool ``[B, H, W]`` (True = padding); only its shape and device are used.
            dtype: dtype of the result (default: the parameters' dtype).

        Returns:
            ``[B, 2F, H, W]``.
        """
        _check_mask(mask)
        batch, height, width = mask.shape
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"mask is {height}x{width} but this LearnedPositionEmbedding supports at most {self.max_size}x{self.max_size} (max_size)")
        x = self.column_embeddings(torch.arange(width, device=mask.device))
        y = self.row_embeddings(torch.arange(height, device=mask.device))
        pos = torch.cat([x[None, :, :].expand(height, -1, -1), y[:, None, :].expand(-1, width, -1)], dim=-1)
        pos = pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)
        return pos if dtype is None else pos.to(dtype)
