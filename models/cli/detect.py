"""Detection on image files: find them, check them, run the detector, write one annotated PNG and one JSON each.

``detect`` takes files, folders and glob patterns (:func:`resolve_image_inputs`), checks every one of
them (:func:`check_detect_inputs`) before the model is loaded, then reads the images ``batch_size``
at a time (:func:`detect_images`): only one batch of decoded images is in memory at once.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.cli.errors import CliError
from models.data.image_files import read_image
from models.engine.detection_io import detection_record, unique_stems, write_detection_files
from models.engine.evaluation import predict_images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File endings that folders and glob patterns are searched for (case-insensitive); files named one by one may have any."""

_GLOB_CHARS = frozenset("*?[")


def open_image(path: str) -> Image.Image:
    return read_image(path)  # the one image reader: EXIF orientation, 16-bit and float images, size limits


def _is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def resolve_image_inputs(inputs: Sequence[str]) -> list[str]:
    """The image files that ``detect``'s IMAGE arguments name, in order, each once.

    - an existing file is taken as it is, whatever its name;
    - a folder gives its image files (by ending, see ``IMAGE_SUFFIXES``), sorted by name, not
      searching sub-folders;
    - a pattern with ``*``, ``?`` or ``[`` gives the image files it matches, sorted (``**`` recurses).

    Raises ``CliError`` naming the argument when it is neither, or when a folder or pattern holds no
    image file.
    """
    if not inputs:
        raise CliError("no IMAGE given: name image files, folders or glob patterns")
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(str(item))
        elif path.is_dir():
            files = sorted(str(p) for p in path.iterdir() if p.is_file() and _is_image_name(p))
            if not files:
                raise CliError(f"image folder {item!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}; sub-folders are not searched)")
            found.extend(files)
        elif _GLOB_CHARS & set(item):
            files = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file() and _is_image_name(p))
            if not files:
                raise CliError(f"image pattern {item!r} matches no image files")
            found.extend(files)
        elif path.exists():
            raise CliError(f"image {item!r} is not a regular file")
        else:
            raise CliError(f"image {item!r}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for name in found:
        key = os.path.realpath(name)
        if key not in seen:
            seen.add(key)
            unique.append(name)
    return unique


def probe_image(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding its pixels; ``CliError`` when it is no image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused by read_image too
            with Image.open(path) as image:
                return image.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for a bad header; all mean "not an image"
        raise CliError(f"image {path!r} cannot be read: {err}") from err


def check_detect_inputs(inputs: Sequence[str], threshold: float, top_k: int, batch_size: int = 1) -> list[str]:
    """Check ``detect``'s options and images before any model is loaded; returns the image files.

    Every image file is opened (its header only, so a folder of large photos is checked quickly);
    the first problem is a ``CliError`` naming the option or the file.
    """
    if not 0.0 <= threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {threshold}")
    if top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {batch_size}")
    paths = resolve_image_inputs(inputs)
    for path in paths:
        probe_image(path)
    return paths


@dataclass
class ImageDetections:
    """What ``detect`` did with one image: where it came from, how many detections, the files written."""

    image: str
    count: int
    record: dict
    png: Path
    json: Path


def describe(result: ImageDetections, threshold: float, best_score: float | None) -> str:
    """One line for an image: its detection count by class, or 0 and the best score below the threshold."""
    if result.count == 0:
        best = f"; best score {best_score:.2f}" if best_score is not None else ""
        return f"{result.image}: 0 detections above {threshold:g}{best} -> {result.png}"
    classes = Counter(d["label"] for d in result.record["detections"])
    by_class = ", ".join(f"{n} {name}" for name, n in classes.most_common())
    noun = "detection" if result.count == 1 else "detections"
    return f"{result.image}: {result.count} {noun} ({by_class}) -> {result.png}"


def detect_images(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    out: Path,
    threshold: float,
    top_k: int,
    device: torch.device | str,
    batch_size: int = 1,
    report: Callable[[str], None] | None = print,
    nms_threshold: float | None = None,
) -> list[ImageDetections]:
    """Run the detector on image files, writing ``out/<stem>.png`` (annotated) and ``out/<stem>.json`` per image.

    Images are read ``batch_size`` at a time (a batch is padded to its largest image, see
    ``docs/cli.md``), so memory holds one batch of decoded images, never all of them. ``report``
    receives one line per image (``[i/n] file: k detections (...) -> png``); ``None`` is silent.
    ``nms_threshold`` (an IoU in (0, 1]; None, the default, is off) drops a detection overlapped
    above it by a better-scored one of the same class (``post_process_object_detection``).
    """
    if not 0.0 <= threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {threshold}")
    if top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {batch_size}")
    paths = [str(p) for p in paths]
    stems = unique_stems(paths)
    id2label = getattr(model.config, "id2label", None)
    results: list[ImageDetections] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [open_image(p) for p in chunk]
        # everything in the top-k, filtered here, so an image without detections can report its best score
        raw = predict_images(model, processor, images, threshold=0.0, top_k=top_k, device=device, nms_threshold=nms_threshold)
        for k, (path, image, result) in enumerate(zip(chunk, images, raw)):
            keep = result["scores"] > threshold
            best = float(result["scores"].max()) if len(result["scores"]) else None
            kept = {key: value[keep] for key, value in result.items()}
            record = detection_record(path, image.size[0], image.size[1], kept, id2label)
            png, js = write_detection_files(out, stems[start + k], image, record)
            done = ImageDetections(path, len(record["detections"]), record, Path(png), Path(js))
            results.append(done)
            if report is not None:
                report(f"[{start + k + 1}/{len(paths)}] {describe(done, threshold, best)}")
        del images, raw
    return results
