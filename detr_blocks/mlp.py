"""``MLP``: a stack of Linear layers with an activation between them (the DETR box head)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_blocks.activation import get_activation


class MLP(nn.Module):
    """``num_layers`` Linear layers: input_dim → hidden_dim → … → output_dim, activation between.

    Args:
        input_dim, hidden_dim, output_dim: widths.
        num_layers: number of Linear layers (>= 1).
        activation: name (see ``get_activation``) or callable applied after every layer but the last.

    Parameters: ``layers.{i}`` (the names of the paper's code and Hugging Face's box heads).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("output_dim", output_dim), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., input_dim]`` → ``[..., output_dim]``."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = self.activation(x)
        return x
