"""``get_activation``: activation functions by the names used in Deformable DETR configs;
``ACTIVATIONS``: those names."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Only shape-preserving functions: an activation sits between two Linear layers (fc1 → fc2, MLP
# layers), so a width-halving one such as ``glu`` cannot be named here (pass a module instead).
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    # the tanh approximation ("gelu_new" in GPT-2 and in Hugging Face configs)
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}

# The names a config may use, in one place (configs validate ``activation_function`` against it).
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


def get_activation(activation: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation function for a name (``relu``, ``gelu``, ``gelu_new``, ``silu``, …),
    or ``activation`` itself when it is already a callable (e.g. an ``nn.Module``)."""
    if callable(activation):
        return activation
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be a callable or one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    return _ACTIVATIONS[activation]
