"""``models.quantize(model, calibration)``: a float detector to an int8 one, with PyTorch's PT2E flow.

Steps (each a function below):

1. check the machine (:func:`check_cpu_support`) and the calibration batches;
2. pad the batches onto one canvas (the largest height and width among them);
3. fold each frozen batch norm into the convolution before it, on a copy of the model;
4. ``torch.export`` the copy: ``(pixel_values, pixel_mask) -> {field: Tensor}``, batch size dynamic;
5. annotate it with ``X86InductorQuantizer`` (int8 convolutions and linear layers, the recipe's
   ``keep_fp32`` layers excluded) and insert observers (``prepare_pt2e``);
6. run the calibration batches through it, then ``convert_pt2e`` (weights stored as int8, activations
   quantized with the observed scales);
7. wrap the graph in a :class:`QuantizedDetector`, which compiles it with inductor on first call.

The ``msda`` op stays one float32 node; so do normalisation, softmax and the box arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from models.quantization.calibrate import Batch, calibration_batches, observe
from models.quantization.cpu_support import check_cpu_support
from models.quantization.detector import QuantizedDetector, pad_to_canvas
from models.quantization.export import OutputFields, export_detector, separate_calls, tensor_fields
from models.quantization.recipe import QuantizationRecipe

GRAPH_PREFIX = "detector."
"""Where the model sits inside :class:`OutputFields`, hence the prefix of its layers' names in the graph."""


def canvas_of(batches: list[Batch]) -> tuple[int, int]:
    """The largest height and width among ``batches``."""
    return max(b.pixel_values.shape[2] for b in batches), max(b.pixel_values.shape[3] for b in batches)


def float_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with frozen batch norms folded into their convolutions."""
    from models.backbones.frozen_batch_norm import fold_batch_norms

    return fold_batch_norms(copy.deepcopy(model).eval())


def build_quantizer(recipe: QuantizationRecipe, model: torch.nn.Module):
    """An ``X86InductorQuantizer`` for ``recipe``: int8 everywhere it can, ``keep_fp32`` layers left float."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=recipe.activations == "dynamic"))
    if recipe.activations == "dynamic":
        quantizer.set_module_type_qconfig(torch.nn.Conv2d, None)
    for name in recipe.fp32_layers(model):
        quantizer.set_module_name_qconfig(GRAPH_PREFIX + name, None)
    return quantizer


def quantize(
    model: torch.nn.Module,
    calibration: Iterable[Mapping[str, Any]],
    recipe: QuantizationRecipe | None = None,
    compile: bool = True,
) -> QuantizedDetector:
    """An int8 version of ``model`` for CPU inference, calibrated on ``calibration``.

    Args:
        model: a ``DeformableDetrForObjectDetection`` or ``DinoForObjectDetection`` (any detector
            called as ``model(pixel_values=..., pixel_mask=...)`` whose output has ``logits`` and
            ``pred_boxes``); it is not modified.
        calibration: an iterable of image-processor outputs (mappings with ``pixel_values``
            ``[B, 3, H, W]`` and optionally ``pixel_mask`` ``[B, H, W]``), e.g.
            ``[processor(images=batch, return_tensors="pt") for batch in batches]``; images from the
            deployment distribution, not the evaluation set. A few dozen images are enough. The
            largest height and width among them fix the canvas the int8 graph runs at.
        recipe: what to quantize (:class:`QuantizationRecipe`; default: static int8 convolutions and
            linear layers, sampling offsets, reference points and the class/box heads in float32).
        compile: compile the int8 graph with inductor on first call (the fast path); False runs it
            eagerly (for checking numerics; slower than the float model).

    Returns:
        A :class:`QuantizedDetector`: ``q(pixel_values=..., pixel_mask=...)`` returns ``logits``,
        ``pred_boxes`` and the model's other tensor outputs.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model: expected a detector module with a .config, got {type(model).__name__}")
    recipe = QuantizationRecipe() if recipe is None else recipe
    if not isinstance(recipe, QuantizationRecipe):
        raise TypeError(f"recipe: expected a QuantizationRecipe, got {type(recipe).__name__}")
    batches = calibration_batches(calibration)
    check_cpu_support(compile)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    canvas = canvas_of(batches)
    batches = [pad_to_canvas(batch, canvas, f"calibration[{index}]") for index, batch in enumerate(batches)]
    float_model = float_copy(model)
    fields = tensor_fields(float_model, batches[0])
    program = export_detector(OutputFields(float_model, fields), batches[0])
    prepared = prepare_pt2e(separate_calls(program.module()), build_quantizer(recipe, float_model))
    observe(prepared, batches)
    graph = convert_pt2e(prepared)
    return QuantizedDetector(graph, model.config, fields, canvas, recipe, compile=compile)
