"""Training and evaluation transforms of the Deformable DETR recipe, for ``(PIL image, target)`` pairs.

Every random transform takes an explicit ``random.Random``; the training dataset seeds one per
(seed, epoch, index), so augmentation is reproducible and unaffected by data-loader workers or by
resuming. Targets are the dicts of :class:`models.data.coco.CocoDetection` (``boxes`` in pixels,
x0, y0, x1, y1); :class:`ToNormalizedTensor` turns them into the model's labels (``boxes`` as
normalized cx, cy, w, h).

The paper's training recipe (:func:`train_transforms` with the defaults): horizontal flip, then either
a random resize of the short side to one of 480..800 (step 32, long side at most 1333), or a resize to
400/500/600, a random crop of 384..600 pixels and then the random resize. :func:`recipe_for_size`
scales the same recipe to smaller images (the embedded demo trains at 128 pixels).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from detr_blocks.box_ops import box_xyxy_to_cxcywh
from models.processing.sizes import resized_shape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PAPER_SCALES = tuple(range(480, 801, 32))
PAPER_MAX_SIZE = 1333
PAPER_CROP_RESIZE = (400, 500, 600)
PAPER_CROP_RANGE = (384, 600)

Target = dict[str, torch.Tensor]


def resize(image: Image.Image, target: Target, size: int, max_size: int | None = None) -> tuple[Image.Image, Target]:
    """Resize so the short side is ``size`` (long side <= ``max_size``), scaling boxes and areas."""
    width, height = image.size
    return resize_to(image, target, *resized_shape(width, height, size, max_size))


def resize_to(image: Image.Image, target: Target, new_w: int, new_h: int) -> tuple[Image.Image, Target]:
    """Resize to exactly ``new_w`` x ``new_h`` (bilinear), scaling boxes and areas."""
    width, height = image.size
    if (new_w, new_h) == (width, height):
        return image, target
    image = image.resize((new_w, new_h), Image.BILINEAR)
    sx, sy = new_w / width, new_h / height
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    return image, target


def hflip(image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    width = image.size[0]
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.transpose(Image.FLIP_LEFT_RIGHT), target


def crop(image: Image.Image, target: Target, top: int, left: int, height: int, width: int) -> tuple[Image.Image, Target]:
    """Crop a region; boxes are clipped to it and boxes left with no area are removed."""
    image = image.crop((left, top, left + width, top + height))
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    target["boxes"] = boxes[keep]
    for key in ("class_labels", "iscrowd"):
        if key in target:
            target[key] = target[key][keep]
    if "area" in target:
        target["area"] = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[keep]
    return image, target


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, target, rng: random.Random):
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image, target, rng: random.Random):
        return hflip(image, target) if rng.random() < self.p else (image, target)


class RandomResize:
    """Resize the short side to a size drawn from ``sizes``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes}")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def __call__(self, image, target, rng: random.Random):
        return resize(image, target, rng.choice(self.sizes), self.max_size)


class RandomSquareResize:
    """Resize to a square whose side is drawn from ``sizes`` (aspect ratio not kept; RT-DETR's resize)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes}")
        self.sizes = [int(s) for s in sizes]

    def __call__(self, image, target, rng: random.Random):
        side = rng.choice(self.sizes)
        return resize_to(image, target, side, side)


class RandomSizeCrop:
    """Crop a random region whose sides are drawn from [min_size, max_size] (capped by the image)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def __call__(self, image, target, rng: random.Random):
        width, height = image.size
        w = rng.randint(min(width, self.min_size), min(width, self.max_size))
        h = rng.randint(min(height, self.min_size), min(height, self.max_size))
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        return crop(image, target, top, left, h, w)


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Callable, second: Callable, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target, rng: random.Random):
        return self.first(image, target, rng) if rng.random() < self.p else self.second(image, target, rng)


class ToNormalizedTensor:
    """PIL image -> float ``[3, H, W]`` normalized by mean/std; boxes -> normalized (cx, cy, w, h).

    The target gains ``size`` (int64 ``[2]``, height and width after the transforms).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, target, rng: random.Random | None = None):
        width, height = image.size
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
        pixels = (data.permute(2, 0, 1).float() / 255.0 - self.mean) / self.std
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = box_xyxy_to_cxcywh(boxes.reshape(-1, 4)) / torch.tensor([width, height, width, height], dtype=torch.float32)
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        return pixels, target


def recipe_for_size(size: int, max_size: int | None = None) -> dict:
    """The paper's augmentation sizes scaled from an 800-pixel short side to ``size``.

    Returns keyword arguments for :func:`train_transforms`.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    factor = size / 800.0
    max_size = int(round(PAPER_MAX_SIZE * factor)) if max_size is None else int(max_size)
    scales = sorted({max(8, int(round(s * factor))) for s in PAPER_SCALES})
    crop_resize = [max(8, int(round(s * factor))) for s in PAPER_CROP_RESIZE]
    crop_range = tuple(max(8, int(round(s * factor))) for s in PAPER_CROP_RANGE)
    return {"scales": scales, "max_size": max_size, "crop_resize": crop_resize, "crop_range": crop_range}


def train_transforms(
    scales: Sequence[int] = PAPER_SCALES,
    max_size: int = PAPER_MAX_SIZE,
    crop_resize: Sequence[int] = PAPER_CROP_RESIZE,
    crop_range: tuple[int, int] = PAPER_CROP_RANGE,
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The training pipeline of the paper (defaults) or its scaled version; call as ``t(image, target, rng)``."""
    steps: list[Callable] = [RandomHorizontalFlip()] if flip else []
    steps.append(
        RandomSelect(
            RandomResize(scales, max_size),
            Compose([RandomResize(crop_resize), RandomSizeCrop(*crop_range), RandomResize(scales, max_size)]),
        )
    )
    steps.append(ToNormalizedTensor(mean, std))
    return Compose(steps)


def eval_transforms(
    size: int = 800, max_size: int = PAPER_MAX_SIZE, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Compose:
    """Resize the short side to ``size`` (long side <= ``max_size``) and normalize."""
    return Compose([RandomResize([size], max_size), ToNormalizedTensor(mean, std)])


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> dict:
    """Pad a list of ``(pixels [3, H_i, W_i], target)`` into a batch.

    Returns ``{"pixel_values": [B, 3, H, W], "pixel_mask": int64 [B, H, W] (1 = real pixel),
    "labels": [target, ...]}``; images are padded at the bottom and right with zeros.
    """
    if not batch:
        raise ValueError("collate needs at least one item")
    height = max(item[0].shape[1] for item in batch)
    width = max(item[0].shape[2] for item in batch)
    pixel_values = torch.zeros(len(batch), 3, height, width)
    pixel_mask = torch.zeros(len(batch), height, width, dtype=torch.int64)
    for i, (pixels, _) in enumerate(batch):
        pixel_values[i, :, : pixels.shape[1], : pixels.shape[2]] = pixels
        pixel_mask[i, : pixels.shape[1], : pixels.shape[2]] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": [item[1] for item in batch]}
