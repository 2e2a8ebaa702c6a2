"""``valid_ratios``: the fraction of each feature map that is not padding (padding-aware references)."""

from __future__ import annotations

import torch


def valid_ratios(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fraction of real (non-padding) columns and rows of a padded feature map.

    Padding sits at the bottom and right, so the real width is counted along the first row and the
    real height along the first column, as the paper's code does.

    Args:
        mask: bool ``[B, H, W]``, True = padding.
        dtype: dtype of the result.

    Returns:
        ``[B, 2]`` as (width ratio, height ratio). Stack one per level to get ``[B, L, 2]``.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool [B, H, W] tensor (True = padding), got {getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    _, height, width = mask.shape
    real_height = (~mask[:, :, 0]).sum(1).to(dtype)
    real_width = (~mask[:, 0, :]).sum(1).to(dtype)
    return torch.stack([real_width / width, real_height / height], dim=-1)
