"""Initialisations the families share."""

from __future__ import annotations

from torch import nn


def xavier_feed_forward(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``fc1`` / ``fc2`` linear layer inside
    ``module`` (the transformer's feed-forward layers, as the papers' code initialises them)."""
    for layer in module.modules():
        for name in ("fc1", "fc2"):
            linear = getattr(layer, name, None)
            if isinstance(linear, nn.Linear):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
