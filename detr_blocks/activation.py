"""``get_activation``: activation functions by the names used in Deformable DETR configs."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    # the tanh approximation ("gelu_new" in GPT-2 and in Hugging Face configs)
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "glu": F.glu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def get_activation(activation: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation function for a name (``relu``, ``gelu``, ``gelu_new``, ``silu``, …),
    or ``activation`` itself when it is already a callable (e.g. an ``nn.Module``)."""
    if callable(activation):
        return activation
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be a callable or one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    return _ACTIVATIONS[activation]
