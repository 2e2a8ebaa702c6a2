"""The residual feed-forward block of encoder and decoder layers, as a module or a function.

``x = norm(x + dropout(fc2(dropout_act(act(fc1(x))))))`` (post-norm, as Deformable DETR and DINO).

Encoder and decoder layers build this block themselves by default and hold its parts directly
(``layer.fc1``, ``layer.fc2``, ``layer.final_layer_norm``: the checkpoint keys of the paper's
converted and Hugging Face's models). A layer given ``feed_forward=module`` holds that module
instead, as ``layer.feed_forward``, and calls it on ``[B, Q, C]`` for the whole residual block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_blocks._common import build_module
from detr_blocks.activation import get_activation


def residual_feed_forward(
    hidden_states: torch.Tensor,
    fc1: nn.Module,
    fc2: nn.Module,
    norm: nn.Module,
    activation: Callable[[torch.Tensor], torch.Tensor],
    dropout: float,
    activation_dropout: float,
    training: bool,
) -> torch.Tensor:
    """``norm(x + dropout(fc2(dropout_act(activation(fc1(x))))))``; ``[..., C]`` → ``[..., C]``.
    Dropouts apply only when ``training``."""
    update = activation(fc1(hidden_states))
    update = nn.functional.dropout(update, p=activation_dropout, training=training)
    update = nn.functional.dropout(fc2(update), p=dropout, training=training)
    return norm(hidden_states + update)


class FeedForward(nn.Module):
    """The post-norm residual feed-forward block as a module of its own.

    Args:
        d_model: C, input and output width.
        ffn_dim: hidden width.
        activation: a name of ``detr_blocks.ACTIVATIONS`` or a callable (shape-preserving).
        dropout: after fc2; activation_dropout: after the activation (training only).
        norm_layer: ``norm_layer(d_model)`` builds the norm applied after the residual sum.

    Parameters: ``fc1``, ``fc2``, ``final_layer_norm`` (and ``activation`` if it is a module).
    ``forward``: ``[..., C]`` → ``[..., C]``.
    """

    def __init__(
        self,
        d_model: int = 256,
        ffn_dim: int = 1024,
        *,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        dropout: float = 0.1,
        activation_dropout: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("ffn_dim", ffn_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, p in (("dropout", dropout), ("activation_dropout", activation_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = norm_layer(d_model)
        self.activation = get_activation(activation)
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return residual_feed_forward(
            hidden_states, self.fc1, self.fc2, self.final_layer_norm, self.activation, self.dropout, self.activation_dropout, self.training
        )


class FeedForwardHost(nn.Module):
    """Base of encoder and decoder layers: owns the residual feed-forward block.

    ``_init_feed_forward`` (called in the layer's ``__init__``) either builds today's block with its
    parts on the layer itself (``fc1``, ``fc2``, ``final_layer_norm``, ``activation``) and sets
    ``feed_forward = None``, or registers the given module as ``feed_forward``.
    ``feed_forward_block(x)`` applies whichever the layer holds.
    """

    feed_forward: nn.Module | None

    def _init_feed_forward(
        self,
        feed_forward: nn.Module | Callable[[], nn.Module] | None,
        d_model: int,
        ffn_dim: int,
        activation: str | Callable[[torch.Tensor], torch.Tensor],
        dropout: float,
        activation_dropout: float,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        self.dropout = dropout
        self.activation_dropout = activation_dropout
        if feed_forward is None:
            self.fc1 = nn.Linear(d_model, ffn_dim)
            self.fc2 = nn.Linear(ffn_dim, d_model)
            self.final_layer_norm = norm_layer(d_model)
            self.activation = get_activation(activation)
            self.feed_forward = None
        else:
            self.feed_forward = build_module("feed_forward", feed_forward)

    def feed_forward_block(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The residual feed-forward block: ``[B, Q, C]`` → ``[B, Q, C]``."""
        if self.feed_forward is not None:
            return self.feed_forward(hidden_states)
        return residual_feed_forward(
            hidden_states, self.fc1, self.fc2, self.final_layer_norm, self.activation, self.dropout, self.activation_dropout, self.training
        )
