"""The embedded synthetic detection dataset: coloured shapes on textured backgrounds, in COCO format.

Everything is deterministic from a seed: image ``i`` of split ``s`` is drawn from its own random
generator seeded with ``(seed, s, i)``, so a split can be regenerated (or extended) without touching
the others. The generator writes real PNG files and a real COCO annotations JSON, so the same loader
(:mod:`models.data.coco`) serves it and real datasets alike.

Layout written by :func:`write_synthetic_coco` (the layout :func:`models.data.coco.resolve_split`
looks for first)::

    DIR/images/train/000000.png ...
    DIR/images/val/000000.png ...
    DIR/annotations/train.json
    DIR/annotations/val.json
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.data.synthetic_spec import SHAPES, SyntheticSpec

__all__ = ["SHAPES", "SyntheticObject", "SyntheticSpec", "generate_image", "synthetic_coco_dict", "write_synthetic_coco"]

_SUPERSAMPLE = 3  # shapes are drawn at this multiple of the final size, then box-filtered down


@dataclass
class SyntheticObject:
    """One drawn shape: its class index (into ``spec.classes``) and box (x, y, w, h) in pixels."""

    label: int
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int] = field(default=(0, 0, 0))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def _iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _contains(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and a[0] + a[2] >= b[0] + b[2] and a[1] + a[3] >= b[1] + b[3]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured, fairly muted background: uint8 ``[H, W, 3]``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
        img = base + t * rng.uniform(-60, 60, size=3)
    elif kind == 1:  # stripes
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, math.pi)
        t = np.sin(2 * math.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)[..., None]
        img = base + t * rng.uniform(8, 30)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(6, 20))
        t = (((xx // cell) + (yy // cell)) % 2)[..., None] * 2 - 1
        img = base + t * rng.uniform(8, 25)
    else:  # smooth blobs: low-resolution noise upsampled
        low = rng.uniform(-1, 1, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3)).astype(np.float32)
        low_img = Image.fromarray(((low + 1) * 127.5).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        img = base + (np.asarray(low_img, dtype=np.float32) / 127.5 - 1) * rng.uniform(20, 50)
    img = img + rng.normal(0, rng.uniform(2, 10), size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_colour(rng: np.random.Generator, background_mean: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour that stands out from the background's mean colour."""
    for _ in range(20):
        hue = rng.uniform(0, 6)
        sector, frac = int(hue), hue - int(hue)
        hi, lo = rng.uniform(180, 255), rng.uniform(0, 70)
        mid_up, mid_down = lo + (hi - lo) * frac, hi - (hi - lo) * frac
        rgb = [
            (hi, mid_up, lo),
            (mid_down, hi, lo),
            (lo, hi, mid_up),
            (lo, mid_down, hi),
            (mid_up, lo, hi),
            (hi, lo, mid_down),
        ][sector % 6]
        if rng.random() < 0.2:  # some dark shapes too
            rgb = tuple(c * 0.35 for c in rgb)
        colour = np.array(rgb)
        if np.abs(colour - background_mean).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float], colour, scale: int) -> None:
    x, y, w, h = (v * scale for v in box)
    x1, y1 = x + w - 1, y + h - 1  # PIL boxes are inclusive
    if shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=colour)
    elif shape == "square":
        draw.rectangle([x, y, x1, y1], fill=colour)
    elif shape == "triangle":
        draw.polygon([(x + w / 2, y), (x1, y1), (x, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(x + w / 2, y), (x1, y + h / 2), (x + w / 2, y1), (x, y + h / 2)], fill=colour)
    elif shape == "cross":
        tw, th = w / 3, h / 3
        draw.rectangle([x + tw, y, x + 2 * tw - 1, y1], fill=colour)
        draw.rectangle([x, y + th, x1, y + 2 * th - 1], fill=colour)
    elif shape == "ring":
        draw.ellipse([x, y, x1, y1], fill=colour)
        # the hole shows the (blurred) average of the ring colour and black, so it stays visible
        # on any background without needing the background pixels here
        draw.ellipse([x + w * 0.3, y + h * 0.3, x1 - w * 0.3, y1 - h * 0.3], fill=tuple(c // 4 for c in colour))
    else:  # pragma: no cover - SyntheticSpec validates names
        raise ValueError(f"unknown shape {shape!r}")


def generate_image(spec: SyntheticSpec, seed: int, split: str, index: int) -> tuple[Image.Image, list[SyntheticObject]]:
    """Draw image ``index`` of ``split``: an RGB PIL image and its objects, from (seed, split, index) alone."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = _image_rng(seed, split, index)
    height, width = spec.image_size
    short = min(height, width)
    background = _background(rng, height, width)
    mean = background.reshape(-1, 3).mean(0)

    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    objects: list[SyntheticObject] = []
    for _ in range(count):
        for _attempt in range(50):
            side = rng.uniform(spec.min_size, spec.max_size) * short
            aspect = math.exp(rng.uniform(-0.3, 0.3))
            w = float(round(min(side * aspect, width - 2)))
            h = float(round(min(side / aspect, height - 2)))
            x = float(rng.integers(0, int(width - w) + 1))
            y = float(rng.integers(0, int(height - h) + 1))
            box = (x, y, w, h)
            if all(
                _iou_xywh(box, o.box) <= spec.max_iou and not _contains(box, o.box) and not _contains(o.box, box)
                for o in objects
            ):
                label = int(rng.integers(0, len(spec.classes)))
                objects.append(SyntheticObject(label, box, _shape_colour(rng, mean)))
                break

    scale = _SUPERSAMPLE
    canvas = Image.fromarray(background).resize((width * scale, height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw_shape(draw, spec.classes[obj.label], obj.box, obj.colour, scale)
    image = canvas.resize((width, height), Image.BOX)
    return image, objects


def synthetic_coco_dict(spec: SyntheticSpec, seed: int, split: str, num_images: int) -> dict:
    """The COCO annotations dict of a split (draws the images to know their objects, writes nothing)."""
    return _make_split(spec, seed, split, num_images, images_dir=None)


def _make_split(spec: SyntheticSpec, seed: int, split: str, num_images: int, images_dir: Path | None) -> dict:
    if num_images < 0:
        raise ValueError(f"num_images for split {split!r} must be >= 0, got {num_images}")
    height, width = spec.image_size
    ids = spec.ids
    images, annotations = [], []
    for i in range(num_images):
        image, objects = generate_image(spec, seed, split, i)
        file_name = f"{i:06d}.png"
        if images_dir is not None:
            image.save(images_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            x, y, w, h = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": ids[obj.label],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(ids, spec.classes)]
    info = {"description": "deformable-detr synthetic shapes", "split": split, "seed": int(seed), "spec": asdict(spec)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_synthetic_coco(
    out_dir: str | Path,
    splits: dict[str, int] | None = None,
    spec: SyntheticSpec | None = None,
    seed: int = 0,
) -> dict[str, tuple[Path, Path]]:
    """Write the synthetic dataset to ``out_dir`` in COCO format.

    Args:
        out_dir: destination directory (created).
        splits: images per split, default ``{"train": 1000, "val": 100}``.
        spec: what the images look like (default :class:`SyntheticSpec`).
        seed: the dataset's seed; the same (spec, seed, split, index) always gives the same image.

    Returns:
        ``{split: (images_dir, annotations_json)}``.
    """
    splits = {"train": 1000, "val": 100} if splits is None else dict(splits)
    spec = SyntheticSpec() if spec is None else spec
    if not isinstance(spec, SyntheticSpec):
        raise TypeError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
    out = Path(out_dir)
    result = {}
    for split, count in splits.items():
        if not split or "/" in split or "\\" in split:
            raise ValueError(f"split names must be plain names, got {split!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"splits[{split!r}] must be a number of images >= 0, got {count!r}")
        images_dir = out / "images" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        coco = _make_split(spec, seed, split, int(count), images_dir)
        ann_file = out / "annotations" / f"{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps(coco))
        result[split] = (images_dir, ann_file)
    return result
