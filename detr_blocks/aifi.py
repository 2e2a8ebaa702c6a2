"""AIFI (attention-based intra-scale feature interaction, RT-DETR): a transformer encoder run on
one feature map only, usually the coarsest, with the fixed 2-D sin-cos positions.

``AIFILayer`` is a plain post-norm transformer encoder layer::

    x = self_attn_layer_norm(x + dropout(self_attn(x, pos)))       # pos added to queries and keys
    x = final_layer_norm(x + dropout(fc2(dropout_act(act(fc1(x))))))

``AIFI`` flattens a map ``[B, C, H, W]`` row-major into ``[B, H·W, C]``, runs its layers with
``sincos_2d_position_embedding(W, H, C, temperature)``, and folds the result back.
Parameter names follow ``transformers``' ``RTDetrEncoder`` (``layers.{i}.self_attn.{q,k,v,out}_proj``,
``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``), so its weights load unchanged.
As the RT-DETR authors' code in its default (``normalize_before=False``), the layer is post-norm;
unlike ``transformers`` in training, it does not clamp inf/NaN activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from detr_blocks._common import build_module, check_layer_args
from detr_blocks.attention import MultiheadSelfAttention
from detr_blocks.feed_forward import FeedForwardHost
from detr_blocks.sincos_2d import sincos_2d_position_embedding


class AIFILayer(FeedForwardHost):
    """Post-norm transformer encoder layer: multi-head self-attention, then a feed-forward network.

    Args:
        d_model: C.
        ffn_dim: hidden width of the feed-forward network.
        self_attn: the attention module, or a zero-argument factory; default
            ``MultiheadSelfAttention(d_model, num_heads, dropout)`` (RT-DETR uses ``dropout`` on the
            attention probabilities too). Called as ``self_attn(hidden_states, position_embeddings,
            attention_mask)`` and returns ``[B, S, C]``.
        num_heads: for the default attention only.
        dropout: after the attention and after fc2 (and in the default attention).
        activation_dropout: after the activation.
        activation: a name of ``detr_blocks.ACTIVATIONS`` or a callable; RT-DETR: ``"gelu"``.
        feed_forward: None (the layer holds ``fc1``, ``fc2``, ``final_layer_norm``) or a module /
            factory replacing the whole residual feed-forward block (see ``detr_blocks.FeedForward``).
        norm_layer: ``norm_layer(d_model)`` builds every norm (default ``nn.LayerNorm``, eps 1e-5).
    """

    def __init__(
        self,
        d_model: int = 256,
        ffn_dim: int = 1024,
        *,
        self_attn: nn.Module | Callable[[], nn.Module] | None = None,
        num_heads: int = 8,
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "gelu",
        feed_forward: nn.Module | Callable[[], nn.Module] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        check_layer_args(d_model, ffn_dim, dropout=dropout, activation_dropout=activation_dropout)
        self.self_attn = build_module("self_attn", self_attn, default=lambda: MultiheadSelfAttention(d_model, num_heads, dropout))
        self.self_attn_layer_norm = norm_layer(d_model)
        self._init_feed_forward(feed_forward, d_model, ffn_dim, activation, dropout, activation_dropout, norm_layer)
        self.d_model = d_model

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hidden_states: ``[B, S, C]``.
            position_embeddings: ``[B, S, C]`` or ``[S, C]``, added to queries and keys only.
            attention_mask: bool, True = may not attend (``[B, S]`` or ``[S, S]``), or None.

        Returns:
            ``[B, S, C]``.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"hidden_states must have shape [B, S, {self.d_model}], got {tuple(hidden_states.shape)}")
        attended = self.self_attn(hidden_states, position_embeddings, attention_mask)
        attended = nn.functional.dropout(attended, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        return self.feed_forward_block(hidden_states)


class AIFI(nn.Module):
    """Transformer encoder layers applied to one feature map with 2-D sin-cos positions.

    Args:
        layers: the layers, applied in order (e.g. ``[AIFILayer(256, 1024)]``); each is called as
            ``layer(hidden_states [B, S, C], position_embeddings [S, C]) -> [B, S, C]``.
        d_model: C, divisible by 4 (the sin-cos table has four blocks).
        temperature: of ``sincos_2d_position_embedding`` (RT-DETR: 10000).

    Submodules: ``layers`` (ModuleList; ``transformers``' ``RTDetrEncoder`` names).
    """

    def __init__(self, layers: Iterable[nn.Module], d_model: int = 256, temperature: float = 10000.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if len(self.layers) == 0:
            raise ValueError("layers must hold at least one layer")
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 4 or d_model % 4:
            raise ValueError(f"d_model must be a positive int divisible by 4, got {d_model!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.d_model = d_model
        self.temperature = float(temperature)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Args:
            feature_map: ``[B, C, H, W]``.

        Returns:
            ``[B, C, H, W]``, the map after the layers.
        """
        if not isinstance(feature_map, torch.Tensor) or feature_map.dim() != 4 or feature_map.shape[1] != self.d_model:
            raise ValueError(f"feature_map must have shape [B, {self.d_model}, H, W], got {tuple(getattr(feature_map, 'shape', ()))}")
        batch, channels, height, width = feature_map.shape
        hidden_states = feature_map.flatten(2).transpose(1, 2)
        positions = sincos_2d_position_embedding(
            width, height, channels, self.temperature, dtype=feature_map.dtype, device=feature_map.device
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, positions)
        return hidden_states.transpose(1, 2).reshape(batch, channels, height, width)
