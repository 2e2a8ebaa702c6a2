"""Reading image files the one way every part of the library does (dataset, ``detect``, ``eval``).

:func:`read_image` returns an 8-bit RGB ``PIL.Image`` whose pixels are what the file means:

- EXIF orientation is applied (a sideways phone JPEG comes back upright);
- 16-bit images (``I;16*``) are scaled to 8 bits (``value / 257``), not clipped to white;
- 32-bit integer images (``I``) with values in 0..255 are taken as they are, in 0..65535 as 16-bit,
  and refused otherwise;
- float images (``F``, e.g. float TIFFs) with finite values in [0, 1] are scaled by 255; other
  values (negative, above 1, NaN, inf) are refused, since no scale can be assumed;
- images larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused.

Every error is an :class:`ImageError` (a ``ValueError``; for a missing file an :class:`ImageFileMissing`,
also a ``FileNotFoundError``) naming the file in one line, also when it is raised in a ``DataLoader``
worker. The returned image carries its path in ``image.info["path"]``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _worker_message(message: str, error_type: type) -> str:
    """The original message of an ``error_type`` that a ``DataLoader`` worker raised, or ``message`` unchanged.

    PyTorch re-raises a worker's exception in the main process as ``error_type(text)`` where ``text`` is
    ``"Caught <name> in DataLoader worker process <n>.\nOriginal Traceback ..."``: the whole formatted
    traceback, chained causes included, ending with ``"<module>.<qualname>: <original message>"``. This
    returns that original message followed by ``(in DataLoader worker process <n>)``.
    """
    header = re.match(r"Caught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback", message)
    if header is None:
        return message
    marker = f"\n{error_type.__module__}.{error_type.__qualname__}: "
    start = message.rfind(marker)
    if start < 0:
        return message
    return f"{message[start + len(marker):].strip()} ({header.group(1)})"


class ImageError(ValueError):
    """An image file that cannot be used (unreadable, too large, pixels that cannot be converted); names the file.

    The message stays one line when the error crosses a ``DataLoader`` worker: the traceback PyTorch puts
    into the re-raised error's text is dropped (:func:`_worker_message`).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_worker_message(str(message), type(self)))


class ImageFileMissing(ImageError, FileNotFoundError):
    """An image file that does not exist: an :class:`ImageError` (a user error, one line) and a
    ``FileNotFoundError``; the message names the file (``errno`` and ``filename`` are not set)."""


def _to_8bit(image: Image.Image, name: str) -> Image.Image:
    """An 8-bit grayscale image from a high-bit-depth or float one, or ``ImageError`` naming ``name``."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.float64) / 257.0
    elif mode == "I":
        array = np.asarray(image).astype(np.float64)
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 65535:
            raise ImageError(f"image {name}: 32-bit integer pixels span {low:g}..{high:g}, outside 0..65535; convert it to 8 or 16 bits first")
        if high > 255:
            array = array / 257.0
    elif mode == "F":
        array = np.asarray(image).astype(np.float64)
        if not np.isfinite(array).all():
            raise ImageError(f"image {name}: float pixels include NaN or infinity")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"image {name}: float pixels span {low:g}..{high:g}; only float images in [0, 1] are read "
                "(convert it to an 8-bit image first)"
            )
        array = array * 255.0
    else:
        raise ImageError(f"image {name}: unsupported pixel mode {mode!r}")
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def read_image(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path`` as an 8-bit RGB ``PIL.Image``, upright (see the module docstring).

    Raises:
        ImageFileMissing: ``path`` is not a file (also a ``FileNotFoundError``).
        ImageError: the file is not a readable image, is a decompression bomb, or holds pixels that
            cannot be converted to 8 bits without guessing; the message names the file.
    """
    file = Path(path)
    name = repr(str(path))
    if not file.is_file():
        reason = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise ImageFileMissing(f"image {name} {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                if image is opened:
                    image = opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"image {name} is too large to read safely (over {Image.MAX_IMAGE_PIXELS} pixels, a possible decompression bomb): {err}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"image {name} cannot be read: {err}") from err
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = _to_8bit(image, name)
    elif image.mode in ("LA", "La", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    image = image if image.mode == "RGB" else image.convert("RGB")
    image.info["path"] = str(path)
    return image
