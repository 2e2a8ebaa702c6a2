"""Detection on image files: read them, run the detector, write one annotated PNG and one JSON each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from models.cli.errors import CliError
from models.engine.detection_io import detection_record, unique_stems, write_detection_files
from models.engine.evaluation import predict_images


def open_image(path: str) -> Image.Image:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"image {path!r}: file not found")
    try:
        with Image.open(file) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CliError(f"image {path!r} cannot be read: {err}") from err


def detect_images(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    out: Path,
    threshold: float,
    top_k: int,
    device: torch.device | str,
    batch_size: int = 4,
) -> list[Path]:
    """Run the detector on image files, writing one PNG and one JSON per image into ``out``."""
    if not 0.0 <= threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {threshold}")
    if top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {top_k}")
    images = [open_image(p) for p in paths]  # check every file before any work
    stems = unique_stems(paths)
    id2label = getattr(model.config, "id2label", None)
    written: list[Path] = []
    for start in tqdm(range(0, len(images), batch_size), desc="detect", disable=len(images) <= batch_size, dynamic_ncols=True):
        chunk = images[start : start + batch_size]
        results = predict_images(model, processor, chunk, threshold=threshold, top_k=top_k, device=device)
        for k, (image, result) in enumerate(zip(chunk, results)):
            record = detection_record(str(paths[start + k]), image.size[0], image.size[1], result, id2label)
            written.extend(write_detection_files(out, stems[start + k], image, record))
    return written
