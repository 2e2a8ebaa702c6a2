"""Calibration data: checking what the caller passed, and running it through an observed graph.

``calibration`` is an iterable of image-processor outputs, each a mapping with ``pixel_values``
``Tensor[B, 3, H, W]`` (float) and, optionally, ``pixel_mask`` ``Tensor[B, H, W]`` (1 on real
pixels, 0 on padding; all ones when absent), exactly what
``DeformableDetrImageProcessor(images=..., return_tensors="pt")`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch


class Batch(NamedTuple):
    """One calibration batch: ``pixel_values`` ``[B, 3, H, W]`` float32, ``pixel_mask`` ``[B, H, W]`` int64."""

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor


def model_inputs(pixel_values: Any, pixel_mask: Any = None, argument: str = "pixel_values") -> Batch:
    """Check one detector input and complete it: a float ``[B, 3, H, W]`` image batch and its
    ``[B, H, W]`` mask (all ones when ``pixel_mask`` is None). Errors name ``argument``."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{argument}: expected a torch.Tensor [B, 3, H, W], got {type(pixel_values).__name__}")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or not pixel_values.is_floating_point():
        raise ValueError(f"{argument}: expected a float tensor [B, 3, H, W], got {pixel_values.dtype} {tuple(pixel_values.shape)}")
    batch, _, height, width = pixel_values.shape
    if pixel_mask is None:
        pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
    elif not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != (batch, height, width):
        shape = tuple(pixel_mask.shape) if isinstance(pixel_mask, torch.Tensor) else type(pixel_mask).__name__
        raise ValueError(f"{argument}: its pixel_mask must be a tensor [B, H, W] = {(batch, height, width)}, got {shape}")
    return Batch(pixel_values.float(), pixel_mask.long())


def calibration_batches(calibration: Any, argument: str = "calibration") -> list[Batch]:
    """The batches of ``calibration`` (an iterable of processor outputs), checked.

    Raises ``TypeError``/``ValueError`` naming ``argument`` when it is not an iterable of mappings
    (a single processor output is a common slip), when an item lacks ``pixel_values``, or when it
    holds no batch at all.
    """
    if calibration is None or isinstance(calibration, (str, bytes, torch.Tensor, Mapping)) or not isinstance(calibration, Iterable):
        hint = " (a single processor output: wrap it in a list)" if isinstance(calibration, Mapping) else ""
        raise TypeError(f"{argument}: expected an iterable of processor outputs (mappings with 'pixel_values'), got {type(calibration).__name__}{hint}")
    batches = []
    for index, item in enumerate(calibration):
        if not isinstance(item, Mapping):
            raise TypeError(f"{argument}[{index}]: expected a mapping with 'pixel_values' (a processor output), got {type(item).__name__}")
        if "pixel_values" not in item:
            raise ValueError(f"{argument}[{index}]: has no 'pixel_values' (keys: {sorted(item)})")
        batches.append(model_inputs(item["pixel_values"], item.get("pixel_mask"), f"{argument}[{index}]"))
    if not batches:
        raise ValueError(f"{argument}: is empty; give at least one batch of calibration images")
    return batches


def calibration_from_images(images: Sequence[Any], processor: Callable[..., Mapping], batch_size: int = 8) -> list[Mapping]:
    """Processor outputs for ``images`` (PIL images or anything ``processor`` takes), ``batch_size`` at a time."""
    if len(images) == 0:
        raise ValueError("images: is empty; give at least one calibration image")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    return [processor(images=list(images[i : i + batch_size]), return_tensors="pt") for i in range(0, len(images), batch_size)]


@torch.no_grad()
def observe(prepared: torch.nn.Module, batches: Sequence[Batch]) -> None:
    """Run every batch through ``prepared`` (a graph with observers inserted) so that the observers
    record the activation ranges."""
    for batch in batches:
        prepared(batch.pixel_values, batch.pixel_mask)
