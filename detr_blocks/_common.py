"""Private helpers shared by the encoder, decoder and two-stage blocks."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from detr_blocks.activation import get_activation


def build_module(name: str, module_or_factory: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Accept an ``nn.Module`` or a zero-argument factory that returns one."""
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


def add_feed_forward(
    layer: nn.Module,
    d_model: int,
    ffn_dim: int,
    activation: str | Callable[[torch.Tensor], torch.Tensor],
    dropout: float,
    activation_dropout: float,
) -> None:
    """Give ``layer`` the post-norm FFN of encoder and decoder layers (Hugging Face names):
    ``fc1``, ``fc2``, ``final_layer_norm``, plus ``activation``, ``dropout``, ``activation_dropout``."""
    layer.fc1 = nn.Linear(d_model, ffn_dim)
    layer.fc2 = nn.Linear(ffn_dim, d_model)
    layer.final_layer_norm = nn.LayerNorm(d_model)
    layer.activation = get_activation(activation)
    layer.dropout = dropout
    layer.activation_dropout = activation_dropout


def feed_forward(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Apply the FFN that ``add_feed_forward`` gave ``layer``:
    ``final_layer_norm(x + dropout(fc2(dropout_act(act(fc1(x))))))``."""
    update = layer.activation(layer.fc1(hidden_states))
    update = nn.functional.dropout(update, p=layer.activation_dropout, training=layer.training)
    update = nn.functional.dropout(layer.fc2(update), p=layer.dropout, training=layer.training)
    return layer.final_layer_norm(hidden_states + update)
