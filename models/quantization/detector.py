"""The quantized detector: an int8 graph called like the model it came from.

``QuantizedDetector(pixel_values=..., pixel_mask=...)`` pads the batch onto the fixed canvas the graph
was exported at (zeros, with ``pixel_mask`` 0 on the padding: the same thing the image processor does
when it batches images of different sizes, so the boxes stay relative to each image) and returns a
:class:`QuantizedDetectionOutput` with the fields recorded at quantization time (``logits``
``[B, Q, num_labels]`` and ``pred_boxes`` ``[B, Q, 4]``, normalized cx, cy, w, h, always; the other
tensor fields the model sets in eval mode as well).

The graph runs through ``torch.compile`` (inductor, with freezing: this is where the int8
convolutions and linear layers become oneDNN int8 kernels). ``compile=False`` runs it eagerly, as
float32 arithmetic on int8-rounded weights and activations: the same numbers to rounding, slowly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from models.quantization.calibrate import Batch, model_inputs
from models.quantization.recipe import QuantizationRecipe


class QuantizedDetectionOutput(dict):
    """The quantized detector's outputs by name; fields read as attributes too (``out.logits``)."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"QuantizedDetectionOutput has no field {name!r} (fields: {list(self)})") from None


def pad_to_canvas(batch: Batch, canvas: tuple[int, int], argument: str = "pixel_values") -> Batch:
    """``batch`` padded at the bottom and right to ``canvas`` = (H, W); the mask is 0 on the padding."""
    height, width = batch.pixel_values.shape[-2:]
    if height > canvas[0] or width > canvas[1]:
        raise ValueError(
            f"{argument}: {height}x{width} images do not fit the quantized graph's canvas {canvas[0]}x{canvas[1]}; "
            "resize them (the model's image processor does) or quantize again with calibration images of this size"
        )
    if (height, width) == tuple(canvas):
        return batch
    pad = (0, canvas[1] - width, 0, canvas[0] - height)
    return Batch(F.pad(batch.pixel_values, pad), F.pad(batch.pixel_mask, pad))


class QuantizedDetector(torch.nn.Module):
    """An int8 detector graph with the calling convention of the float model.

    Args:
        graph: the quantized graph: ``(pixel_values [B, 3, H, W], pixel_mask [B, H, W]) -> {field: Tensor}``
            on the canvas ``(H, W)``.
        config: the float model's config (``model.config``: labels, sizes), kept for ``id2label`` and saving.
        fields: the output fields the graph returns.
        canvas: ``(H, W)`` the graph was exported at; smaller inputs are padded onto it.
        recipe: what was quantized.
        compile: run the graph through ``torch.compile`` (inductor); False runs it eagerly.
    """

    def __init__(self, graph: torch.nn.Module, config: Any, fields: Sequence[str], canvas: tuple[int, int],
                 recipe: QuantizationRecipe, compile: bool = True) -> None:
        super().__init__()
        self.graph = graph
        self.config = config
        self.fields = tuple(fields)
        self.canvas = (int(canvas[0]), int(canvas[1]))
        self.recipe = recipe
        self.compiled = compile
        self._run = None
        self.training = False

    def train(self, mode: bool = True) -> QuantizedDetector:
        if mode:
            raise RuntimeError("a quantized detector is for inference only; train the float model and quantize it again")
        return self  # the exported graph has no train/eval switch (and refuses one)

    def _runner(self):
        if self._run is None:
            self._run = torch.compile(self.graph) if self.compiled else self.graph
        return self._run

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None, **unused: Any) -> QuantizedDetectionOutput:
        """``pixel_values`` ``[B, 3, H, W]`` (H, W at most the canvas), ``pixel_mask`` ``[B, H, W]`` or None (all ones).

        Keyword arguments a float model would take for training or debugging (``labels``,
        ``output_attentions``, ...) are refused by name.
        """
        given = sorted(name for name, value in unused.items() if value is not None and value is not False)
        if given:
            raise TypeError(f"{', '.join(given)}: not supported by a quantized detector (inference outputs only)")
        batch = model_inputs(pixel_values, pixel_mask)
        if batch.pixel_values.device.type != "cpu":
            raise ValueError(f"pixel_values: the int8 detector runs on the CPU; got a tensor on {batch.pixel_values.device}")
        batch = pad_to_canvas(batch, self.canvas)
        # freezing (weights as constants) is what lets inductor pack the int8 weights for oneDNN; it is
        # read when a graph compiles (first call, and a new batch size), so it is set around every call
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            outputs = self._runner()(batch.pixel_values, batch.pixel_mask)
        return QuantizedDetectionOutput((name, outputs[name]) for name in self.fields)
