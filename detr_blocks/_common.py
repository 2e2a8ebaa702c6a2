"""Private helpers shared by the encoder, decoder and two-stage blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def build_module(
    name: str, module_or_factory: nn.Module | Callable[[], nn.Module] | None, default: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Accept an ``nn.Module`` or a zero-argument factory that returns one; None builds ``default()``
    when a default is given (a layer's own choice of module)."""
    if module_or_factory is None and default is not None:
        return default()
    if isinstance(module_or_factory, nn.Module):
        return module_or_factory
    if callable(module_or_factory):
        module = module_or_factory()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name} factory must return an nn.Module, got {type(module).__name__}")
        return module
    raise TypeError(f"{name} must be an nn.Module or a callable returning one, got {type(module_or_factory).__name__}")


def shape_list(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``[L, 2]`` (H, W) as a tensor or a sequence → list of ``(H, W)`` python ints."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[-1] != 2:
            raise ValueError(f"spatial_shapes must have shape [L, 2] (H, W), got {tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if not shapes or any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must list at least one level of positive (H, W), got {shapes}")
    return shapes


def check_layer_args(d_model: int, ffn_dim: int, **probabilities: float) -> None:
    """Widths must be positive ints and dropout probabilities in [0, 1)."""
    if not isinstance(d_model, int) or not isinstance(ffn_dim, int) or d_model < 1 or ffn_dim < 1:
        raise ValueError(f"d_model and ffn_dim must be positive ints, got {d_model!r} and {ffn_dim!r}")
    for name, p in probabilities.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")


def check_valid_ratios(valid_ratios: torch.Tensor, levels: int, batch: int | None = None) -> None:
    ok = isinstance(valid_ratios, torch.Tensor) and valid_ratios.dim() == 3 and tuple(valid_ratios.shape[1:]) == (levels, 2)
    if not ok or (batch is not None and valid_ratios.shape[0] != batch):
        raise ValueError(f"valid_ratios must have shape [B={'B' if batch is None else batch}, L={levels}, 2] (w, h ratios), got {tuple(getattr(valid_ratios, 'shape', ()))}")


def check_padding_mask(name: str, mask: torch.Tensor | None, batch: int, length: int) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (batch, length):
        raise ValueError(f"{name} must be a bool [B={batch}, S={length}] tensor (True = padding), got {getattr(mask, 'dtype', None)} {tuple(getattr(mask, 'shape', ()))}")
