"""The transformer stacks and detection heads every family builds the same way from its config.

A config here is anything with the transformer fields both families share (``d_model``,
``num_feature_levels``, ``encoder_layers``, ``decoder_layers``, ``*_attention_heads``,
``*_ffn_dim``, ``*_n_points``, ``dropout``, ``attention_dropout``, ``activation_dropout``,
``activation_function``, ``disable_custom_kernels``, ``num_labels``).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from detr_blocks.decoder import DeformableDecoderLayer
from detr_blocks.encoder import DeformableEncoder, DeformableEncoderLayer
from detr_blocks.mlp import MLP
from models.common.initialisation import xavier_feed_forward
from msda import MultiScaleDeformableAttention

CLASS_PRIOR = 0.01  # the focal-loss prior of the papers' code: every class starts at probability 0.01


def deformable_attention(config: Any, num_heads: int, num_points: int) -> MultiScaleDeformableAttention:
    """``msda.MultiScaleDeformableAttention`` over ``config.num_feature_levels`` levels."""
    return MultiScaleDeformableAttention(config.d_model, num_heads, config.num_feature_levels, num_points, use_reference=config.disable_custom_kernels)


def encoder_stack(config: Any) -> DeformableEncoder:
    """``config.encoder_layers`` post-norm deformable encoder layers (Xavier feed-forward)."""
    encoder = DeformableEncoder(
        [
            DeformableEncoderLayer(
                config.d_model,
                config.encoder_ffn_dim,
                self_attn=deformable_attention(config, config.encoder_attention_heads, config.encoder_n_points),
                dropout=config.dropout,
                activation_dropout=config.activation_dropout,
                activation=config.activation_function,
            )
            for _ in range(config.encoder_layers)
        ]
    )
    xavier_feed_forward(encoder)
    return encoder


def decoder_layers(config: Any) -> list[DeformableDecoderLayer]:
    """``config.decoder_layers`` post-norm decoder layers: self-attention, deformable cross-attention,
    feed-forward (Xavier)."""
    layers = [
        DeformableDecoderLayer(
            config.d_model,
            config.decoder_ffn_dim,
            encoder_attn=deformable_attention(config, config.decoder_attention_heads, config.decoder_n_points),
            num_heads=config.decoder_attention_heads,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            activation=config.activation_function,
        )
        for _ in range(config.decoder_layers)
    ]
    for layer in layers:
        xavier_feed_forward(layer)
    return layers


def class_head(config: Any) -> nn.Linear:
    """``Linear(d_model, num_labels)`` with the focal prior as its bias."""
    head = nn.Linear(config.d_model, config.num_labels)
    nn.init.constant_(head.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
    return head


def box_head(config: Any) -> MLP:
    """``MLP(d_model, d_model, 4, 3 layers)`` with a zero last layer (the first boxes are the references)."""
    head = MLP(config.d_model, config.d_model, 4, num_layers=3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head
