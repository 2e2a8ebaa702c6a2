"""The whole job behind ``deformable-detr quantize``: calibration images in, a saved int8 detector out.

The command line loads the float model and its processor (``models.cli.loading.load_detector``), then calls
:func:`quantize_to_folder`; ``detect`` and ``eval`` check :func:`~models.quantization.artifact.is_quantized_checkpoint`
on ``--checkpoint`` and load it with :func:`~models.quantization.artifact.load_quantized` (the processor from the
same folder's ``preprocessor_config.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.quantization.artifact import save_quantized
from models.quantization.calibrate import calibration_from_images
from models.quantization.detector import QuantizedDetector
from models.quantization.pt2e import quantize
from models.quantization.recipe import QuantizationRecipe


def quantize_to_folder(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[str | os.PathLike | Any],
    out: str | os.PathLike,
    recipe: QuantizationRecipe | None = None,
    batch_size: int = 8,
    compile: bool = True,
) -> QuantizedDetector:
    """Quantize ``model`` calibrated on ``images`` and save it, with ``processor``, to ``out``.

    Args:
        model: the float detector (either family).
        processor: its image processor (resizes and normalizes the calibration images as at inference;
            saved beside the int8 graph).
        images: image files (paths) or PIL images from the deployment distribution, never the
            evaluation images; a few dozen are enough. Their largest processed height and width fix
            the canvas of the int8 graph (larger images are refused at inference).
        out: the folder to write (:func:`~models.quantization.artifact.save_quantized`'s layout).
        recipe: what to quantize (default :class:`QuantizationRecipe`).
        batch_size: calibration images per batch.
        compile: compile the int8 graph on first call (see :func:`~models.quantization.pt2e.quantize`).

    Returns:
        The quantized detector (already saved).
    """
    if isinstance(images, (str, os.PathLike)) or len(images) == 0:
        raise ValueError(f"images: expected a non-empty list of image files or PIL images, got {images!r}")
    from models.data.image_files import read_image

    loaded = [read_image(image) if isinstance(image, (str, os.PathLike)) else image for image in images]
    detector = quantize(model, calibration_from_images(loaded, processor, batch_size), recipe, compile=compile)
    save_quantized(detector, Path(out), processor)
    return detector
