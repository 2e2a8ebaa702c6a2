"""RT-DETR's training augmentation (the authors' ``rtdetr_pytorch/configs/rtdetr/include/dataloader.yml``),
for the ``(PIL image, target)`` pairs of :mod:`models.data.augmentation`.

The pipeline (:func:`rt_detr_train_transforms`)::

    photometric distortion (p 0.5) -> zoom out (canvas 1..4x, fill 0, p 0.5) -> IoU crop (p 0.8)
    -> drop boxes under 1 pixel -> horizontal flip (p 0.5) -> square resize -> drop boxes under 1 pixel
    -> [0, 1] pixels, boxes as normalized (cx, cy, w, h)

The first four steps are torchvision's own ``transforms.v2`` classes behind :class:`TorchvisionStep`, a thin
adapter to our convention: it draws a seed from our ``random.Random`` and runs the transform under a forked
torch generator seeded with it, so the result depends on that ``rng`` only (reproducible like the other
transforms, and the global torch generator is left as it was).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from models.data.augmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    RandomHorizontalFlip,
    RandomSquareResize,
    Target,
    ToNormalizedTensor,
)

PER_BOX_KEYS = ("class_labels", "iscrowd", "area")
_AREA_BEFORE = "_box_area_before"


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _per_box_entries(inputs) -> tuple[torch.Tensor, ...]:
    """The labels getter of ``SanitizeBoundingBoxes`` for :class:`TorchvisionStep`'s inputs: every
    per-box tensor of the target (labels, crowd flags, areas), so removed boxes take them along."""
    return tuple(value for key, value in inputs[1].items() if key != "boxes")


class TorchvisionStep:
    """A ``torchvision.transforms.v2`` transform as a step ``(image, target, rng) -> (image, target)``.

    ``target["boxes"]`` (pixels, x0, y0, x1, y1) travels as ``tv_tensors.BoundingBoxes``, and its per-box
    entries (``class_labels``, ``iscrowd``, ``area``) along with it. ``area`` (COCO's segment area) is
    scaled by how much each box's own area changed, so a box the transform clips keeps the same share of
    its object's area. Randomness comes from a seed drawn from ``rng`` (see the module docstring).
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image, target: Target, rng: random.Random):
        width, height = image.size
        boxes = target["boxes"].reshape(-1, 4).float()
        per_box = {key: target[key] for key in PER_BOX_KEYS if key in target}
        per_box[_AREA_BEFORE] = _box_area(boxes)
        inputs = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)), **per_box}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.getrandbits(63))
            image, outputs = self.transform(image, inputs)
        target = dict(target)
        target["boxes"] = outputs["boxes"].as_subclass(torch.Tensor)
        target.update({key: outputs[key] for key in PER_BOX_KEYS if key in outputs})
        if "area" in target:
            target["area"] = target["area"] * (_box_area(target["boxes"]) / outputs[_AREA_BEFORE].clamp_min(1e-12))
        return image, target


def sanitize_boxes(min_size: float = 1.0) -> TorchvisionStep:
    """Drop the boxes with a side under ``min_size`` pixels, with their per-box entries."""
    return TorchvisionStep(v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=_per_box_entries))


def rt_detr_train_transforms(
    size: int = 640,
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The authors' training pipeline ending in a ``size`` x ``size`` square; call as ``t(image, target, rng)``.

    ``flip=False`` leaves out the horizontal flip only; ``mean``/``std`` as :class:`ToNormalizedTensor`
    (RT-DETR itself reads [0, 1] pixels: mean 0, std 1).
    """
    if int(size) <= 0:
        raise ValueError(f"size must be a positive int, got {size}")
    return Compose([
        TorchvisionStep(v2.RandomPhotometricDistort(p=0.5)),
        TorchvisionStep(v2.RandomZoomOut(fill=0)),
        TorchvisionStep(v2.RandomApply([v2.RandomIoUCrop()], p=0.8)),
        sanitize_boxes(1.0),
        *([RandomHorizontalFlip()] if flip else []),
        RandomSquareResize([int(size)]),
        sanitize_boxes(1.0),
        ToNormalizedTensor(mean, std),
    ])
