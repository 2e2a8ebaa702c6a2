"""Small tensor functions shared by the blocks: ``inverse_sigmoid`` and ``refine_boxes``."""

from __future__ import annotations

import torch


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with x clamped to [0, 1] and both x and 1 − x clamped to >= ``eps``,
    so that 0 and 1 map to finite logits (±log(1/eps) ≈ ±11.5), as in the paper's code."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Apply a box head's output in logit space: ``sigmoid(delta + inverse_sigmoid(reference))``.

    Args:
        delta: ``[..., 4]`` unnormalized (cx, cy, w, h) deltas (the box head's output).
        reference: ``[..., 4]`` normalized boxes, or ``[..., 2]`` normalized points; a point
            refines only (cx, cy), and (w, h) are ``sigmoid(delta[..., 2:])``.
        eps: of ``inverse_sigmoid`` (Deformable DETR's code uses 1e-5, DINO's 1e-3).

    Returns:
        ``[..., 4]`` normalized (cx, cy, w, h).
    """
    if delta.shape[-1] != 4:
        raise ValueError(f"delta must have shape [..., 4], got {tuple(delta.shape)}")
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference, eps)).sigmoid()
    if reference.shape[-1] == 2:
        return torch.cat([delta[..., :2] + inverse_sigmoid(reference, eps), delta[..., 2:]], dim=-1).sigmoid()
    raise ValueError(f"reference must have shape [..., 2] (points) or [..., 4] (boxes), got {tuple(reference.shape)}")
