"""Deformable encoder: every pixel of every level attends to a few sampled points of all levels.

Conventions shared by the encoder and decoder:
    - multi-scale features are flattened level by level, each row-major, into ``[B, S, C]`` with
      S = Σ H_l·W_l; ``spatial_shapes`` int64 ``[L, 2]`` holds (H_l, W_l) and ``level_start_index``
      int64 ``[L]`` the offset of each level in S;
    - padding masks are bool and True marks padding (the paper's convention; Hugging Face's
      ``attention_mask`` / ``pixel_mask`` is the opposite);
    - ``valid_ratios`` ``[B, L, 2]`` is (width, height) fraction of real pixels per level
      (``detr_blocks.valid_ratios``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from detr_blocks._common import build_module, check_layer_args, check_padding_mask, check_valid_ratios, shape_list
from detr_blocks.feed_forward import FeedForwardHost
from msda import MultiScaleDeformableAttention


def encoder_reference_points(
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    valid_ratios: torch.Tensor,
) -> torch.Tensor:
    """Reference point of every pixel of every level, as seen from every level.

    Pixel centres are normalized by the real (unpadded) size of their own level, then scaled by
    each level's valid ratio, so a point lands on the same image location at every level and a
    padded image gets the points of its unpadded self.

    Args:
        spatial_shapes: ``[L, 2]`` (H, W) per level (tensor or list).
        valid_ratios: ``[B, L, 2]`` (w, h) fractions of real pixels.

    Returns:
        ``[B, S, L, 2]`` normalized (x, y), dtype of ``valid_ratios``.
    """
    shapes = shape_list(spatial_shapes)
    check_valid_ratios(valid_ratios, len(shapes))
    dtype, device = valid_ratios.dtype, valid_ratios.device
    per_level = []
    for level, (height, width) in enumerate(shapes):
        ys = torch.linspace(0.5, height - 0.5, height, dtype=dtype, device=device)
        xs = torch.linspace(0.5, width - 0.5, width, dtype=dtype, device=device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = grid_y.reshape(1, -1) / (valid_ratios[:, None, level, 1] * height)
        ref_x = grid_x.reshape(1, -1) / (valid_ratios[:, None, level, 0] * width)
        per_level.append(torch.stack((ref_x, ref_y), -1))
    points = torch.cat(per_level, 1)
    return points[:, :, None] * valid_ratios[:, None]


class DeformableEncoderLayer(FeedForwardHost):
    """Post-norm encoder layer: deformable self-attention, then a feed-forward network.

    ``x = self_attn_layer_norm(x + dropout(self_attn(x + pos, ref, x, ...)))``
    ``x = final_layer_norm(x + dropout(fc2(dropout_act(act(fc1(x))))))`` (the feed-forward block)

    Args:
        d_model: C.
        ffn_dim: hidden width of the feed-forward network.
        self_attn: the attention module, or a zero-argument factory; default
            ``msda.MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points)``.
            It is called as ``self_attn(query, reference_points, value, spatial_shapes,
            level_start_index, value_padding_mask)`` and returns ``[B, S, C]``.
        num_heads, num_levels, num_points: for the default attention only.
        dropout: after the attention and after fc2.
        activation_dropout: after the activation.
        activation: ``"relu"``, ``"gelu"``, ``"gelu_new"``, ``"silu"``… or a callable.
        feed_forward: None (default): the layer builds the block above itself, its parts held
            directly by the layer (``fc1``, ``fc2``, ``final_layer_norm``: unchanged checkpoint
            keys). Otherwise a module (or zero-argument factory) that replaces the whole residual
            block, residual sum and norm included: called as ``feed_forward(x [B, S, C]) -> [B, S,
            C]`` and held as ``layer.feed_forward`` (its keys: ``feed_forward.*``); ``ffn_dim``,
            ``activation``, ``activation_dropout`` are then unused. See ``detr_blocks.FeedForward``.
        norm_layer: ``norm_layer(d_model)`` builds every norm of the layer (default
            ``nn.LayerNorm``; e.g. ``nn.RMSNorm``).

    Submodules (Hugging Face names): ``self_attn``, ``self_attn_layer_norm``, and ``fc1``, ``fc2``,
    ``final_layer_norm`` (or ``feed_forward``).
    """

    def __init__(
        self,
        d_model: int = 256,
        ffn_dim: int = 1024,
        *,
        self_attn: nn.Module | Callable[[], nn.Module] | None = None,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        activation_dropout: float = 0.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        feed_forward: nn.Module | Callable[[], nn.Module] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        check_layer_args(d_model, ffn_dim, dropout=dropout, activation_dropout=activation_dropout)
        self.self_attn = build_module("self_attn", self_attn, default=lambda: MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points))
        self.self_attn_layer_norm = norm_layer(d_model)
        self._init_feed_forward(feed_forward, d_model, ffn_dim, activation, dropout, activation_dropout, norm_layer)
        self.d_model = d_model

    def forward(
        self,
        hidden_states: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hidden_states: ``[B, S, C]`` flattened multi-scale features.
            reference_points: ``[B, S, L, 2]`` (``encoder_reference_points``).
            spatial_shapes: int64 ``[L, 2]``; level_start_index: int64 ``[L]``.
            position_embeddings: ``[B, S, C]``, added to the attention's query only.
            padding_mask: bool ``[B, S]``, True = padding (those values are not sampled).

        Returns:
            ``[B, S, C]``.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"hidden_states must have shape [B, S, {self.d_model}], got {tuple(hidden_states.shape)}")
        batch, length, _ = hidden_states.shape
        check_padding_mask("padding_mask", padding_mask, batch, length)
        query = hidden_states if position_embeddings is None else hidden_states + position_embeddings
        attended = self.self_attn(query, reference_points, hidden_states, spatial_shapes, level_start_index, padding_mask)
        attended = nn.functional.dropout(attended, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        return self.feed_forward_block(hidden_states)


class DeformableEncoderOutput(NamedTuple):
    """``last_hidden_state`` ``[B, S, C]``; ``hidden_states``: the input and every layer's output
    (``num_layers + 1`` tensors ``[B, S, C]``) when requested, else None."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class DeformableEncoder(nn.Module):
    """A stack of encoder layers sharing reference points built from the valid ratios.

    Args:
        layers: the layers, applied in order (e.g. ``[DeformableEncoderLayer(...) for _ in range(6)]``).
            Each is called as ``layer(hidden_states, reference_points, spatial_shapes,
            level_start_index, position_embeddings, padding_mask)``.

    As the paper's code, the stack applies no dropout to its input and does not clamp inf/NaN
    activations (Hugging Face's encoder does both in training; in eval the outputs agree).

    Submodules: ``layers`` (ModuleList).
    """

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("layers must hold at least one layer")

    def forward(
        self,
        hidden_states: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        spatial_shapes_list: Sequence[tuple[int, int]] | None = None,
    ) -> DeformableEncoderOutput:
        """Args:
            hidden_states: ``[B, S, C]`` flattened multi-scale features.
            spatial_shapes: int64 ``[L, 2]`` (H, W); level_start_index: int64 ``[L]``.
            valid_ratios: ``[B, L, 2]``; None means no padding (all ones).
            position_embeddings: ``[B, S, C]`` (position + level embedding).
            padding_mask: bool ``[B, S]``, True = padding.
            output_hidden_states: also return the input and every layer's output.
            spatial_shapes_list: the same (H, W) as python ints, when the caller has them; saves a
                device-to-host copy and keeps ``torch.compile``/``torch.export`` graphs free of
                data-dependent shapes. Default: read from ``spatial_shapes``.

        Returns:
            ``DeformableEncoderOutput``.
        """
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must have shape [B, S, C], got {tuple(hidden_states.shape)}")
        shapes = shape_list(spatial_shapes if spatial_shapes_list is None else spatial_shapes_list)
        batch, length, _ = hidden_states.shape
        if sum(h * w for h, w in shapes) != length:
            raise ValueError(f"hidden_states has S={length} positions but spatial_shapes {shapes} add up to {sum(h * w for h, w in shapes)}")
        if valid_ratios is None:
            valid_ratios = hidden_states.new_ones(batch, len(shapes), 2)
        check_valid_ratios(valid_ratios, len(shapes), batch)
        reference_points = encoder_reference_points(shapes, valid_ratios)
        states = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, reference_points, spatial_shapes, level_start_index, position_embeddings, padding_mask)
            if states is not None:
                states.append(hidden_states)
        return DeformableEncoderOutput(hidden_states, tuple(states) if states is not None else None)
