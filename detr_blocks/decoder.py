"""Deformable decoder: object queries attend to each other, then to sampled points of the encoder
output around their reference points; injected policies decide, per layer, the query positions,
how the reference boxes are refined, and the norm of the returned intermediate states.

Conventions are those of ``detr_blocks.encoder`` (flattened levels, True = padding, valid ratios).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn

from detr_blocks._common import build_module, check_layer_args, check_padding_mask, check_valid_ratios
from detr_blocks.attention import MultiheadSelfAttention
from detr_blocks.feed_forward import FeedForwardHost
from detr_blocks.query_position import InputQueryPosition
from detr_blocks.refinement import DetachedRefinement, NoRefinement
from msda import MultiScaleDeformableAttention


class DeformableDecoderLayer(FeedForwardHost):
    """Post-norm decoder layer: self-attention, deformable cross-attention, feed-forward network.

    ``x = self_attn_layer_norm(x + dropout(self_attn(x, pos)))`` (pos added to queries and keys)
    ``x = encoder_attn_layer_norm(x + dropout(encoder_attn(x + pos, ref, memory, ...)))``
    ``x = final_layer_norm(x + dropout(fc2(dropout_act(act(fc1(x))))))`` (the feed-forward block)

    Args:
        d_model: C.
        ffn_dim: hidden width of the feed-forward network.
        self_attn: module or zero-argument factory; default ``MultiheadSelfAttention(d_model,
            num_heads, attention_dropout)``. Called as ``self_attn(hidden_states,
            position_embeddings, attention_mask)`` → ``[B, Q, C]``.
        encoder_attn: module or factory; default ``msda.MultiScaleDeformableAttention(d_model,
            num_heads, num_levels, num_points)``. Called as ``encoder_attn(query, reference_points,
            memory, spatial_shapes, level_start_index, memory_padding_mask)`` → ``[B, Q, C]``.
        num_heads, num_levels, num_points, attention_dropout: for the default attentions only.
        dropout: after each attention and after fc2.
        activation_dropout: after the activation.
        activation: ``"relu"``, ``"gelu"``, ``"gelu_new"``, ``"silu"``… or a callable.
        feed_forward: None (default): the layer builds the block above itself, its parts held
            directly by the layer (``fc1``, ``fc2``, ``final_layer_norm``: unchanged checkpoint
            keys). Otherwise a module (or zero-argument factory) that replaces the whole residual
            block, residual sum and norm included: called as ``feed_forward(x [B, Q, C]) -> [B, Q,
            C]`` and held as ``layer.feed_forward`` (its keys: ``feed_forward.*``); ``ffn_dim``,
            ``activation``, ``activation_dropout`` are then unused. See ``detr_blocks.FeedForward``.
        norm_layer: ``norm_layer(d_model)`` builds every norm of the layer (default
            ``nn.LayerNorm``; e.g. ``nn.RMSNorm``).

    Submodules (Hugging Face names): ``self_attn`` (``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``), ``self_attn_layer_norm``, ``encoder_attn``, ``encoder_attn_layer_norm``, and
    ``fc1``, ``fc2``, ``final_layer_norm`` (or ``feed_forward``).
    """

    def __init__(
        self,
        d_model: int = 256,
        ffn_dim: int = 1024,
        *,
        self_attn: nn.Module | Callable[[], nn.Module] | None = None,
        encoder_attn: nn.Module | Callable[[], nn.Module] | None = None,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        feed_forward: nn.Module | Callable[[], nn.Module] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        check_layer_args(d_model, ffn_dim, dropout=dropout, activation_dropout=activation_dropout, attention_dropout=attention_dropout)
        self.self_attn = build_module("self_attn", self_attn, default=lambda: MultiheadSelfAttention(d_model, num_heads, dropout=attention_dropout))
        self.self_attn_layer_norm = norm_layer(d_model)
        self.encoder_attn = build_module("encoder_attn", encoder_attn, default=lambda: MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points))
        self.encoder_attn_layer_norm = norm_layer(d_model)
        self._init_feed_forward(feed_forward, d_model, ffn_dim, activation, dropout, activation_dropout, norm_layer)
        self.d_model = d_model

    def forward(
        self,
        hidden_states: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hidden_states: ``[B, Q, C]`` queries (the "target").
            reference_points: ``[B, Q, L, 2]`` points or ``[B, Q, L, 4]`` boxes, already scaled by
                the valid ratios (``DeformableDecoder`` does that).
            memory: ``[B, S, C]`` encoder output.
            spatial_shapes: int64 ``[L, 2]``; level_start_index: int64 ``[L]``.
            position_embeddings: ``[B, Q, C]`` query positions, added to the self-attention's
                queries and keys and to the cross-attention's query.
            memory_padding_mask: bool ``[B, S]``, True = padding.
            self_attn_mask: bool, True = may not attend; ``[B, Q]``, ``[Q, Q]`` or ``[B, Q, Q]``.

        Returns:
            ``[B, Q, C]``.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"hidden_states must have shape [B, Q, {self.d_model}], got {tuple(hidden_states.shape)}")
        if memory.dim() != 3 or memory.shape[0] != hidden_states.shape[0] or memory.shape[-1] != self.d_model:
            raise ValueError(f"memory must have shape [B={hidden_states.shape[0]}, S, {self.d_model}], got {tuple(memory.shape)}")
        check_padding_mask("memory_padding_mask", memory_padding_mask, memory.shape[0], memory.shape[1])

        attended = self.self_attn(hidden_states, position_embeddings, self_attn_mask)
        attended = nn.functional.dropout(attended, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)

        query = hidden_states if position_embeddings is None else hidden_states + position_embeddings
        attended = self.encoder_attn(query, reference_points, memory, spatial_shapes, level_start_index, memory_padding_mask)
        attended = nn.functional.dropout(attended, p=self.dropout, training=self.training)
        hidden_states = self.encoder_attn_layer_norm(hidden_states + attended)
        return self.feed_forward_block(hidden_states)


class DeformableDecoderOutput(NamedTuple):
    """Outputs of ``DeformableDecoder`` (batch first, Hugging Face layout).

    last_hidden_state: ``[B, Q, C]``, the last entry of ``intermediate_hidden_states``.
    intermediate_hidden_states: ``[B, N, Q, C]``, every layer's output through the decoder's
        ``intermediate_norm`` (N layers; the norm is the identity by default).
    intermediate_reference_points: ``[B, N, Q, 2 or 4]``, the references recorded by the
        refinement policy after every layer (refined and detached with box refinement; the input
        points repeated without; refined, undetached with ``LookForwardTwice``).
    hidden_states: the input and every layer's raw output (N + 1 tensors) when requested, else None.
    """

    last_hidden_state: torch.Tensor
    intermediate_hidden_states: torch.Tensor
    intermediate_reference_points: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _as_module_list(name: str, modules: Iterable[nn.Module] | None, minimum: int) -> nn.ModuleList | None:
    if modules is None:
        return None
    module_list = modules if isinstance(modules, nn.ModuleList) else nn.ModuleList(modules)
    if len(module_list) < minimum:
        raise ValueError(f"{name} must hold at least one module per decoder layer ({minimum}), got {len(module_list)}")
    return module_list


class DeformableDecoder(nn.Module):
    """A stack of decoder layers; per layer, three injected policies decide what varies between
    Deformable DETR and its variants, so that a variant swaps a policy and copies no loop:

    for every layer i::

        level_points = reference_points scaled by the valid ratios          # [B, Q, L, 2|4]
        position = query_position(i, hidden_states, level_points, position_embeddings)
        hidden_states = layers[i](hidden_states, level_points, memory, ..., position, ...)
        reference_points, recorded = refinement(i, hidden_states, reference_points, bbox_embed[i])
        intermediate_hidden_states[i] = intermediate_norm(hidden_states)
        intermediate_reference_points[i] = recorded

    The refinement sees the layer's raw output; only the returned intermediate states go through
    ``intermediate_norm`` (as DINO, whose shared norm feeds the heads, not the refinement).

    Args:
        layers: the layers, applied in order. Each is called as ``layer(hidden_states,
            reference_points, memory, spatial_shapes, level_start_index, position_embeddings,
            memory_padding_mask, self_attn_mask)``.
        bbox_embed: None, or one box head per layer (more are allowed: the two-stage proposal
            head is conventionally the extra last one); the refinement policy gets
            ``bbox_embed[i]``.
        class_embed: None, or the class heads. The decoder does not call them; it holds them so
            that a two-stage or refining model keeps them where the paper's and Hugging Face's
            checkpoints put them (``decoder.class_embed``). Pass the same ModuleList the model
            uses for its predictions: the modules, and so their parameters, are shared.
        refinement: a ``detr_blocks.refinement`` policy (module). Default: ``DetachedRefinement()``
            with ``bbox_embed`` (layer i's output refines the references in logit space, and the
            refined references, detached, feed layer i + 1, as in the paper), ``NoRefinement()``
            without.
        query_position: a ``detr_blocks.query_position`` policy (module). Default
            ``InputQueryPosition()``: every layer gets the ``position_embeddings`` passed in.
            ``BoxQueryPosition(d_model)`` computes them from the current boxes (DINO).
        intermediate_norm: applied to every layer's output before it is returned; default
            ``nn.Identity()`` (DINO: one shared ``nn.LayerNorm(d_model)``).

    Submodules: ``layers``, ``bbox_embed`` and ``class_embed`` (ModuleList or None),
    ``refinement``, ``query_position``, ``intermediate_norm`` (the defaults hold no parameters, so
    checkpoint keys are those of ``layers`` and the heads).
    """

    def __init__(
        self,
        layers: Iterable[nn.Module],
        bbox_embed: Iterable[nn.Module] | None = None,
        class_embed: Iterable[nn.Module] | None = None,
        *,
        refinement: nn.Module | None = None,
        query_position: nn.Module | None = None,
        intermediate_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("layers must hold at least one layer")
        self.bbox_embed = _as_module_list("bbox_embed", bbox_embed, len(self.layers))
        self.class_embed = _as_module_list("class_embed", class_embed, len(self.layers))
        if refinement is None:
            refinement = NoRefinement() if self.bbox_embed is None else DetachedRefinement()
        for name, module in (("refinement", refinement), ("query_position", query_position), ("intermediate_norm", intermediate_norm)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        if getattr(refinement, "needs_box_head", False) and self.bbox_embed is None:
            raise ValueError(f"refinement {type(refinement).__name__} refines through box heads: pass bbox_embed (one head per layer)")
        self.refinement = refinement
        self.query_position = InputQueryPosition() if query_position is None else query_position
        self.intermediate_norm = nn.Identity() if intermediate_norm is None else intermediate_norm

    def forward(
        self,
        hidden_states: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        self_attn_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> DeformableDecoderOutput:
        """Args:
            hidden_states: ``[B, Q, C]`` initial queries (the "target").
            reference_points: ``[B, Q, 2]`` normalized (x, y) points, or ``[B, Q, 4]`` normalized
                (cx, cy, w, h) boxes (two-stage), relative to the real (unpadded) image.
            memory: ``[B, S, C]`` encoder output.
            spatial_shapes: int64 ``[L, 2]``; level_start_index: int64 ``[L]``.
            valid_ratios: ``[B, L, 2]``; None means no padding.
            position_embeddings: ``[B, Q, C]`` query positions (given to ``query_position``).
            memory_padding_mask: bool ``[B, S]``, True = padding.
            self_attn_mask: bool, True = may not attend (see ``DeformableDecoderLayer``).
            output_hidden_states: also return the input and every layer's output.

        Returns:
            ``DeformableDecoderOutput``.
        """
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must have shape [B, Q, C], got {tuple(hidden_states.shape)}")
        batch, queries, _ = hidden_states.shape
        if reference_points.dim() != 3 or tuple(reference_points.shape[:2]) != (batch, queries) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must have shape [B={batch}, Q={queries}, 2 or 4], got {tuple(reference_points.shape)}")
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[-1] != 2:
            raise ValueError(f"spatial_shapes must have shape [L, 2] (H, W), got {tuple(spatial_shapes.shape)}")
        levels = spatial_shapes.shape[0]
        if valid_ratios is None:
            valid_ratios = hidden_states.new_ones(batch, levels, 2)
        check_valid_ratios(valid_ratios, levels, batch)

        states = [hidden_states] if output_hidden_states else None
        intermediate, intermediate_points = [], []
        for index, layer in enumerate(self.layers):
            # reference points are relative to the real image; the op samples relative to the padded map
            ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            level_points = reference_points[:, :, None] * ratios[:, None]
            position = self.query_position(index, hidden_states, level_points, position_embeddings)
            hidden_states = layer(
                hidden_states, level_points, memory, spatial_shapes, level_start_index, position, memory_padding_mask, self_attn_mask
            )
            box_head = None if self.bbox_embed is None else self.bbox_embed[index]
            reference_points, recorded = self.refinement(index, hidden_states, reference_points, box_head)
            intermediate.append(self.intermediate_norm(hidden_states))
            intermediate_points.append(recorded)
            if states is not None:
                states.append(hidden_states)
        return DeformableDecoderOutput(
            intermediate[-1],
            torch.stack(intermediate, dim=1),
            torch.stack(intermediate_points, dim=1),
            tuple(states) if states is not None else None,
        )
