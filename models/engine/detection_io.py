"""Writing detections: an annotated PNG (boxes, labels, scores drawn) and a JSON record per image."""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def class_colour(label: int) -> tuple:
    """A distinct, saturated RGB colour for class ``label`` (golden-ratio hue steps)."""
    hue = (0.61803398875 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def relative_luminance(colour: Sequence[float]) -> float:
    """WCAG 2 relative luminance (0 black .. 1 white) of an sRGB colour ``(r, g, b)`` in 0..255."""
    if len(colour) < 3:
        raise ValueError(f"colour must be (r, g, b) in 0..255, got {colour!r}")
    linear = []
    for value in colour[:3]:
        c = float(value) / 255.0
        linear.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours: 1 (same luminance) .. 21 (black on white)."""
    light, dark = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def contrasting_colour(background: Sequence[float], palette: Sequence[tuple] = (BLACK, WHITE)) -> tuple:
    """The colour of ``palette`` with the largest contrast ratio to ``background`` (the first on a tie).

    With the default black-and-white palette the ratio is at least 4.58 whatever the background
    (the square root of 21, reached at a luminance of about 0.18).
    """
    if not palette:
        raise ValueError("palette must hold at least one colour")
    return max(palette, key=lambda colour: contrast_ratio(colour, background))


def mean_outline_colour(pixels: np.ndarray, box: Sequence[float], width: int) -> tuple:
    """Mean ``(r, g, b)`` of the pixels covered by the outline ``ImageDraw.rectangle(box, width=width)`` draws.

    That outline covers the pixels of the rectangle ``x0..x1``, ``y0..y1`` (inclusive, rounded) that lie
    less than ``width`` pixels inside its edges; those outside the image are left out. Where none is
    inside the image, the mean of the whole image.

    Args:
        pixels: ``[H, W, 3]`` image (uint8 or float).
        box: (x0, y0, x1, y1) in pixels.
        width: outline width in pixels (>= 1).
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must have shape [H, W, 3] with H, W > 0, got {pixels.shape}")
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    height, image_width = pixels.shape[:2]
    ys, xs = np.mgrid[max(0, y0) : min(height, y1 + 1), max(0, x0) : min(image_width, x1 + 1)]
    ring = (xs < x0 + width) | (xs > x1 - width) | (ys < y0 + width) | (ys > y1 - width)
    covered = pixels[ys[ring], xs[ring]] if ring.any() else pixels.reshape(-1, 3)
    return tuple(float(v) for v in covered.astype(np.float64).mean(axis=0))


def detection_record(
    image_name: str,
    width: int,
    height: int,
    result: Mapping[str, torch.Tensor],
    id2label: Mapping[int, str] | None = None,
) -> dict:
    """The JSON record of one image's detections.

    Args:
        image_name: the image file (as given by the user).
        width, height: size of the image in pixels.
        result: ``{"scores": [K], "labels": [K], "boxes": [K, 4]}``, boxes (x0, y0, x1, y1) in pixels.
        id2label: class names of the labels.

    Returns:
        ``{"image", "width", "height", "detections": [{"label", "label_id", "score", "box"}]}``
        sorted by decreasing score.
    """
    for key in ("scores", "labels", "boxes"):
        if key not in result:
            raise ValueError(f"result must have 'scores', 'labels' and 'boxes'; {key!r} is missing")
    scores = result["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True)
    detections = []
    for i in order.tolist():
        label = int(result["labels"][i])
        box = [round(float(v), 2) for v in result["boxes"][i].tolist()]
        name = id2label.get(label, str(label)) if id2label else str(label)
        detections.append({"label": name, "label_id": label, "score": round(float(scores[i]), 4), "box": box})
    return {"image": image_name, "width": int(width), "height": int(height), "box_format": "x0,y0,x1,y1 pixels", "detections": detections}


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Area shared by two (x0, y0, x1, y1) rectangles."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[float, float]], canvas_size: tuple[int, int]) -> list[tuple[float, float]]:
    """Top-left corners for label tags that stay inside the canvas and do not cover each other.

    ``boxes[i]`` is detection ``i``'s box and ``sizes[i]`` its tag's (width, height), in order of
    priority (the best score first: it gets the best place). Each tag goes to the first free place
    among: above the box's top-left corner, inside it, below the box, inside its bottom-left corner,
    the same at the right edge, then further above or below in steps of its own height. Where every
    place is taken, the one that covers the least of the tags already placed.
    """
    width, height = canvas_size
    placed: list[tuple[float, float, float, float]] = []
    corners = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        slots = [(x0, y0 - h), (x0, y0), (x0, y1), (x0, y1 - h), (x1 - w, y0 - h), (x1 - w, y1), (x1 - w, y0), (x1 - w, y1 - h)]
        for step in range(1, len(boxes) + 1):
            slots += [(x0, y0 - h * (step + 1)), (x0, y1 + h * step)]
        best, best_cost = None, None
        for x, y in slots:
            x = min(max(0.0, x), max(0.0, width - w))
            y = min(max(0.0, y), max(0.0, height - h))
            rect = (x, y, x + w, y + h)
            cost = sum(_overlap(rect, other) for other in placed)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost == 0:
                break
        placed.append(best)
        corners.append((best[0], best[1]))
    return corners


def _text_colour(fill: tuple) -> tuple:
    """Black on light tags, white on dark ones."""
    r, g, b = fill[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(image: Image.Image, record: Mapping, min_side: int = 384) -> Image.Image:
    """A copy of ``image`` with the record's boxes, labels and scores drawn on it.

    Small images are enlarged first (short side at least ``min_side``) so the text stays legible.
    Boxes are drawn lowest score first (the best box's outline ends on top). Each outline is a line
    of its class colour between two thinner borders, black or white, whichever contrasts more with
    the mean colour of the image under the outline (:func:`contrasting_colour`, WCAG contrast ratio
    at least 4.58): a box stays visible on an object or background of its own class colour. Then
    every label goes in a tag of its class colour next to its box, placed so that tags never cover
    one another while a free place exists (:func:`place_labels`), the best score placed first.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    scale = max(1.0, min_side / max(1, min(image.size)))
    canvas = image.convert("RGB")
    if scale > 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font_size = max(11, round(min(canvas.size) / 30))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has a fixed-size default font
        font = ImageFont.load_default()
    line = max(2, round(min(canvas.size) / 200))
    border = max(1, line // 2)
    pad = max(2, font_size // 5)
    detections = list(record["detections"])
    boxes = [[v * scale for v in det["box"]] for det in detections]
    pixels = np.array(canvas)  # the image before anything is drawn on it
    for det, box in reversed(list(zip(detections, boxes))):
        outer = [box[0] - border, box[1] - border, box[2] + border, box[3] + border]
        halo = contrasting_colour(mean_outline_colour(pixels, outer, line + 2 * border))
        draw.rectangle(outer, outline=halo, width=line + 2 * border)
        draw.rectangle(box, outline=class_colour(det["label_id"]), width=line)
    texts, extents = [], []
    for det in detections:
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        texts.append(text)
        extents.append((left, top, right - left + 2 * pad, bottom - top + 2 * pad))
    corners = place_labels(boxes, [(w, h) for _, _, w, h in extents], canvas.size)
    for det, text, (left, top, w, h), (x, y) in zip(detections, texts, extents, corners):
        fill = class_colour(det["label_id"])
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill, outline=(0, 0, 0), width=1)
        draw.text((x + pad - left, y + pad - top), text, fill=_text_colour(fill), font=font)
    return canvas


def write_detection_files(out_dir: str | os.PathLike, stem: str, image: Image.Image, record: Mapping) -> Sequence[Path]:
    """Write ``out_dir/stem.png`` (annotated) and ``out_dir/stem.json``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{stem}.png", out / f"{stem}.json"
    draw_detections(image, record).save(png)
    js.write_text(json.dumps(record, indent=2) + "\n")
    return png, js


def unique_stems(paths: Sequence[str | os.PathLike]) -> list:
    """Output names for input images: the file stem, with the parent folder added where stems collide."""
    stems = [Path(p).stem for p in paths]
    result = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            parent = Path(path).resolve().parent.name
            stem = f"{parent}_{stem}"
        result.append(stem)
    seen: dict[str, int] = {}
    final = []
    for stem in result:
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        final.append(stem if n == 0 else f"{stem}_{n}")
    return final
