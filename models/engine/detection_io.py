"""Writing detections: an annotated PNG (boxes, labels, scores drawn) and a JSON record per image."""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


def class_colour(label: int) -> tuple:
    """A distinct, saturated RGB colour for class ``label`` (golden-ratio hue steps)."""
    hue = (0.61803398875 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


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


def draw_detections(image: Image.Image, record: Mapping, min_side: int = 384) -> Image.Image:
    """A copy of ``image`` with the record's boxes, labels and scores drawn on it.

    Small images are enlarged first (short side at least ``min_side``) so the text stays legible.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    scale = max(1.0, min_side / max(1, min(image.size)))
    canvas = image.convert("RGB")
    if scale > 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, round(min(canvas.size) / 32))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has a fixed-size default font
        font = ImageFont.load_default()
    line = max(2, round(min(canvas.size) / 200))
    for det in record["detections"]:
        x0, y0, x1, y1 = (v * scale for v in det["box"])
        colour = class_colour(det["label_id"])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tw + 4, ty + th + 4], fill=colour)
        draw.text((x0 + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)
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
