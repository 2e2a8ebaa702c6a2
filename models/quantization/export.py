"""The detector as a graph: ``torch.export`` of the model with its tensor outputs as a dict.

The exported graph takes ``(pixel_values [B, 3, H, W] float32, pixel_mask [B, H, W] int64)`` and
returns ``{field: Tensor}`` for the output fields the model sets in eval mode (``logits``,
``pred_boxes``, ...). The batch size is dynamic; height and width are fixed at export (the models
turn feature-map sizes into a ``spatial_shapes`` tensor with ``torch.as_tensor``, which pins them), so
:class:`~models.quantization.detector.QuantizedDetector` pads smaller images onto that canvas.
``torch.ops.msda.ms_deform_attn`` stays one node of the graph.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from models.quantization.calibrate import Batch

MAX_BATCH = 1024


class OutputFields(torch.nn.Module):
    """``model`` called with keywords, returning ``{name: Tensor}`` for ``fields``."""

    def __init__(self, model: torch.nn.Module, fields: Sequence[str]) -> None:
        super().__init__()
        self.detector = model
        self.fields = tuple(fields)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.detector(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return {name: getattr(outputs, name) for name in self.fields}


@torch.no_grad()
def tensor_fields(model: torch.nn.Module, batch: Batch) -> tuple[str, ...]:
    """Names of the output fields that ``model`` (in eval mode) sets to a tensor."""
    outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
    names = outputs.keys() if hasattr(outputs, "keys") else ()
    fields = tuple(name for name in names if isinstance(getattr(outputs, name, None), torch.Tensor))
    if "logits" not in fields or "pred_boxes" not in fields:
        raise TypeError(f"model: expected a detector whose output has 'logits' and 'pred_boxes' tensors, got {type(outputs).__name__} with {list(names)}")
    return fields


def dynamic_shapes() -> tuple[dict[int, torch.export.Dim], dict[int, torch.export.Dim]]:
    """The batch size dynamic for both inputs (one symbol)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {0: batch}, {0: batch}


def export_detector(module: torch.nn.Module, example: Batch, dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` (an :class:`OutputFields`, or a quantized graph of one) on ``example``."""
    if dynamic and example.pixel_values.shape[0] == 1:  # a batch of 1 would pin the batch size
        example = Batch(example.pixel_values.expand(2, -1, -1, -1), example.pixel_mask.expand(2, -1, -1))
    with torch.no_grad():
        program = torch.export.export(module, (example.pixel_values, example.pixel_mask), dynamic_shapes=dynamic_shapes() if dynamic else None)
    # functional ops only (``add_`` -> ``add``): the quantizer's conv + add + relu patterns need them
    return program.run_decompositions({})


def separate_calls(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make each call of a ``torch.nn`` layer its own source partition, in place; returns ``graph``.

    The quantizer finds convolution + add + ReLU patterns by grouping nodes per calling module
    (``nn_module_stack``), so ResNet's ``relu``, called twice in a block, becomes one group with two
    outputs, which it rejects ("Input partition has more than one output node"). Recording each such
    node as its own source (``source_fn_stack``: the node's name and the layer's class) keeps the
    layer type the matcher looks for; the module names the recipe filters on are untouched.
    """
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or node.meta.get("source_fn_stack") or not stack:
            continue
        layer = torch_nn_class(list(stack.values())[-1][1])
        if layer is not None:
            node.meta["source_fn_stack"] = [(node.name, layer)]
    return graph


def torch_nn_class(layer: type | str) -> type | None:
    """The ``torch.nn`` layer class recorded in ``nn_module_stack`` (a class, or after
    ``run_decompositions`` its qualified name); None for other modules."""
    name = layer if isinstance(layer, str) else f"{layer.__module__}.{layer.__qualname__}"
    if not name.startswith("torch.nn.modules."):
        return None
    module_name, _, class_name = name.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name, None)
