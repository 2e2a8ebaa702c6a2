"""What gets quantized: the recipe that :func:`models.quantize` applies and the saved artifact records.

Convolutions and linear layers become int8 (weights per output channel, symmetric; activations per
tensor, affine, their ranges observed on the calibration images: "static"), except the layers named in
``keep_fp32``, which stay float32. Everything else (the ``msda`` op, normalisation, softmax, the box
arithmetic) runs in float32 in any case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

KEEP_FP32 = ("sampling_offsets", "reference_points", "bbox_embed", "class_embed", "enc_out_bbox_embed", "enc_out_class_embed")
"""Layers kept in float32 by default. ``sampling_offsets`` (and the decoder's ``reference_points``)
give sampling positions in fractions of a feature map: an int8 step there moves every sampled point.
The class and box heads turn features into the outputs themselves (box coordinates are read to a
pixel). Together they are a few percent of the multiply-adds of a ResNet-50 detector."""

ACTIVATIONS = ("static", "dynamic")


@dataclass(frozen=True)
class QuantizationRecipe:
    """How :func:`models.quantize` quantizes a detector.

    Attributes:
        activations: ``"static"`` (activation scales fixed from the calibration images) or
            ``"dynamic"`` (linear layers only, activation scales computed per call; convolutions then
            stay float32, as PyTorch's x86 quantizer does not mix the two modes).
        keep_fp32: names of layers left in float32: a convolution or linear layer stays float32 when
            one of the dotted parts of its qualified name (``model.decoder.layers.0.encoder_attn.
            sampling_offsets``) is in this tuple, or when its name starts with an entry that holds a dot.
    """

    activations: str = "static"
    keep_fp32: tuple[str, ...] = KEEP_FP32

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"activations: must be one of {ACTIVATIONS}, got {self.activations!r}")
        if isinstance(self.keep_fp32, str) or not all(isinstance(name, str) and name for name in self.keep_fp32):
            raise TypeError(f"keep_fp32: must be a tuple of non-empty layer names, got {self.keep_fp32!r}")
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))

    def keeps_fp32(self, module_name: str) -> bool:
        """Whether the layer called ``module_name`` (a qualified name from ``named_modules()``) stays float32."""
        parts = module_name.split(".")
        return any(name in parts or ("." in name and module_name.startswith(name)) for name in self.keep_fp32)

    def fp32_layers(self, model: torch.nn.Module) -> list[str]:
        """Qualified names of the convolution and linear layers of ``model`` that stay float32."""
        return [name for name, module in model.named_modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and self.keeps_fp32(name)]

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationRecipe:
        unknown = set(data) - {"activations", "keep_fp32"}
        if unknown:
            raise ValueError(f"recipe: unknown keys {sorted(unknown)}")
        return cls(**data)
