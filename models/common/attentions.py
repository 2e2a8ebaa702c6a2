"""Attention weights for ``output_attentions=True``, recorded with forward hooks.

The deformable attention (``msda.MultiScaleDeformableAttention``) computes its weights in Python
(``attention_weights`` linear layer, then a softmax over levels x points) before the op samples;
a hook on that linear layer sees the logits and applies the same softmax. The decoder's
self-attention runs through ``scaled_dot_product_attention``, which does not return weights; a
hook on it recomputes them from the module's own projections. Hooks exist only inside
``record_attentions``: with the flag off nothing is attached and the compiled op runs as always.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from msda import MultiScaleDeformableAttention


@dataclass
class RecordedAttentions:
    """Per layer, in call order.

    - encoder: ``[B, S, M, L, P]`` deformable self-attention weights of each encoder layer
      (``[B, M, S, S]`` for a dense one).
    - decoder_self: ``[B, M, Q, Q]`` self-attention probabilities of each decoder layer.
    - cross: ``[B, Q, M, L, P]`` deformable cross-attention weights of each decoder layer.
    """

    encoder: list[torch.Tensor] = field(default_factory=list)
    decoder_self: list[torch.Tensor] = field(default_factory=list)
    cross: list[torch.Tensor] = field(default_factory=list)


def _deformable_hook(attention: MultiScaleDeformableAttention, into: list[torch.Tensor]) -> Any:
    heads, levels, points = attention.num_heads, attention.num_levels, attention.num_points

    def hook(module: nn.Module, inputs: Any, logits: torch.Tensor) -> None:
        batch, queries = logits.shape[:2]
        weights = logits.view(batch, queries, heads, levels * points).softmax(-1)
        into.append(weights.view(batch, queries, heads, levels, points))

    return attention.attention_weights.register_forward_hook(hook)


def _self_attention_weights(module: nn.Module, hidden_states: torch.Tensor, position: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax(q kᵀ / √d) of a ``MultiheadSelfAttention``-like module (``q_proj``, ``k_proj``,
    ``num_heads``), ``[B, M, Q, Q]``; ``mask`` True = may not attend."""
    batch, length, channels = hidden_states.shape
    heads = module.num_heads
    head_dim = channels // heads
    source = hidden_states if position is None else hidden_states + position
    query = module.q_proj(source).view(batch, length, heads, head_dim).transpose(1, 2)
    key = module.k_proj(source).view(batch, length, heads, head_dim).transpose(1, 2)
    scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)
    if mask is not None:
        if mask.shape == (batch, length):
            mask = mask[:, None, None, :]
        elif mask.dim() == 3:
            mask = mask[:, None]
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1)


def _self_attention_hook(attention: nn.Module, into: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        names = ("hidden_states", "position_embeddings", "attention_mask")
        values = dict(zip(names, args))
        values.update({name: kwargs[name] for name in names if name in kwargs})
        into.append(_self_attention_weights(module, values["hidden_states"], values.get("position_embeddings"), values.get("attention_mask")))

    return attention.register_forward_hook(hook, with_kwargs=True)


@contextmanager
def record_attentions(encoder_layers: nn.ModuleList, decoder_layers: nn.ModuleList) -> Iterator[RecordedAttentions]:
    """Record every layer's attention weights while the block runs.

    Args:
        encoder_layers: layers each holding one ``MultiScaleDeformableAttention`` (``self_attn``), or a
            dense ``MultiheadSelfAttention``-like ``self_attn`` (recorded as ``[B, M, S, S]``).
        decoder_layers: layers with a ``self_attn`` (``q_proj``, ``k_proj``, ``num_heads``) and a
            ``MultiScaleDeformableAttention`` cross-attention.

    Yields:
        ``RecordedAttentions``, filled as the layers run.
    """
    recorded = RecordedAttentions()
    handles = []
    try:
        for layer in encoder_layers:
            deformable = [module for module in layer.modules() if isinstance(module, MultiScaleDeformableAttention)]
            for module in deformable:
                handles.append(_deformable_hook(module, recorded.encoder))
            self_attn = getattr(layer, "self_attn", None)
            if not deformable and self_attn is not None and hasattr(self_attn, "q_proj") and hasattr(self_attn, "k_proj"):
                handles.append(_self_attention_hook(self_attn, recorded.encoder))  # a dense encoder layer (RT-DETR's AIFI)
        for layer in decoder_layers:
            self_attn = getattr(layer, "self_attn", None)
            if self_attn is not None and hasattr(self_attn, "q_proj") and hasattr(self_attn, "k_proj"):
                handles.append(_self_attention_hook(self_attn, recorded.decoder_self))
            for module in layer.modules():
                if isinstance(module, MultiScaleDeformableAttention):
                    handles.append(_deformable_hook(module, recorded.cross))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
