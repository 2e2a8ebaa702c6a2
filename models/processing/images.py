"""Input images of the image processors: flattening a batch, finding the channel axis, checking shapes.

Accepted images: ``PIL.Image.Image`` (mode ``"RGB"`` or ``"L"``), ``numpy.ndarray`` and ``torch.Tensor`` of
shape ``[H, W]`` (grayscale), ``[C, H, W]`` or ``[H, W, C]`` with ``C`` in ``{1, 3}``; a batch is a list or
tuple of those, or one ``[B, C, H, W]`` / ``[B, H, W, C]`` array. The channel axis of a PIL image is known (last); that of an
array is ``input_data_format`` when given, else guessed (:func:`channel_layout`). Grayscale images (2-D or one channel) are
repeated to three channels, so a batch may mix grayscale and RGB. Four-channel (RGBA) and other channel
counts are refused with an error: drop or composite the alpha channel first (``image.convert("RGB")``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

ChannelLayout = Literal["first", "last", "none"]

_FORMAT_NAMES = {
    "channels_first": "first",
    "first": "first",
    "channels_last": "last",
    "last": "last",
    "none": "none",
}
_PIL_MODES = ("RGB", "L")


def _is_image(value: Any) -> bool:
    return isinstance(value, (PIL.Image.Image, np.ndarray, torch.Tensor))


def flatten_images(images: Any) -> list:
    """Return the images of ``images`` as a flat list (one image, a list of images, or a 4-D batch)."""
    if _is_image(images):
        if isinstance(images, PIL.Image.Image) or images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"images: an array must have 2, 3 or 4 dimensions, got shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        flat = []
        for index, item in enumerate(images):
            if isinstance(item, (list, tuple)):
                flat.extend(item)
            elif _is_image(item):
                flat.append(item)
            else:
                raise ValueError(
                    f"images[{index}] must be a PIL image, numpy array or torch tensor, got {type(item).__name__}"
                )
        if not flat:
            raise ValueError("images is empty: pass at least one image")
        for index, item in enumerate(flat):
            if not _is_image(item):
                raise ValueError(
                    f"images[{index}] must be a PIL image, numpy array or torch tensor, got {type(item).__name__}"
                )
            if not isinstance(item, PIL.Image.Image) and item.ndim not in (2, 3):
                raise ValueError(f"images[{index}] must have 2 or 3 dimensions, got shape {tuple(item.shape)}")
        return flat
    raise ValueError(
        f"images must be a PIL image, numpy array, torch tensor or a list of them, got {type(images).__name__}"
    )


def normalize_data_format(input_data_format: str | None) -> ChannelLayout | None:
    """Map ``"channels_first"`` / ``"channels_last"`` / ``"none"`` (or ``None``: infer) to a layout."""
    if input_data_format is None:
        return None
    name = getattr(input_data_format, "value", input_data_format)
    if name not in _FORMAT_NAMES:
        raise ValueError(
            f"input_data_format must be 'channels_first', 'channels_last', 'none' or None, got {input_data_format!r}"
        )
    return _FORMAT_NAMES[name]


def channel_layout(shape: tuple[int, ...], input_data_format: ChannelLayout | None, index: int) -> ChannelLayout:
    """Where the channels of an image of ``shape`` are; checks the channel count and the spatial size.

    The channel axis is the given ``input_data_format`` or, when that is ``None``, the first axis if it has
    1 or 3 entries, else the last axis if it has 1 or 3 entries (the reference processors' rule).
    """
    if len(shape) == 2:
        layout: ChannelLayout = "none"
        if input_data_format not in (None, "none"):
            raise ValueError(f"images[{index}] is 2-D (grayscale) but input_data_format is {input_data_format!r}")
    elif len(shape) != 3:
        raise ValueError(f"images[{index}] must have 2 or 3 dimensions, got shape {tuple(shape)}")
    elif input_data_format in ("first", "last"):
        layout = input_data_format
    elif input_data_format == "none":
        raise ValueError(f"images[{index}] has shape {tuple(shape)} but input_data_format is 'none' (2-D only)")
    elif shape[0] in (1, 3):
        layout = "first"
    elif shape[-1] in (1, 3):
        layout = "last"
    elif 4 in (shape[0], shape[-1]):
        raise ValueError(
            f"images[{index}] has 4 channels (shape {tuple(shape)}): RGBA images are not accepted, convert "
            "them to RGB first (e.g. image.convert('RGB') or array[..., :3])"
        )
    else:
        raise ValueError(
            f"images[{index}] has shape {tuple(shape)}: no channel axis of size 1 or 3 at either end. "
            "Four-channel (RGBA) images are not accepted: convert them to RGB first; pass input_data_format "
            "if the channel axis is ambiguous."
        )
    if layout == "none":
        height, width = shape
        channels = 1
    elif layout == "first":
        channels, height, width = shape
    else:
        height, width, channels = shape
    if channels not in (1, 3):
        raise ValueError(
            f"images[{index}] has {channels} channels (shape {tuple(shape)}); only 1 (grayscale) or 3 (RGB) are "
            "accepted: convert RGBA and other images to RGB first"
        )
    if height == 0 or width == 0:
        raise ValueError(f"images[{index}] is empty: shape {tuple(shape)}")
    return layout


def pil_layout(array: np.ndarray) -> ChannelLayout:
    """The known layout of an array from :func:`pil_to_array`: ``"last"`` (``[H, W, 3]``) or ``"none"`` (``[H, W]``).

    A PIL image's layout is never guessed: a 1-pixel-high RGB image (``[1, W, 3]``) would otherwise be
    read as channels-first. ``input_data_format`` describes array inputs and does not apply to PIL images.
    """
    return "none" if array.ndim == 2 else "last"


def pil_to_array(image: PIL.Image.Image, index: int) -> np.ndarray:
    """``[H, W, 3]`` or ``[H, W]`` uint8 array of a PIL image in mode ``"RGB"`` or ``"L"``."""
    if image.mode not in _PIL_MODES:
        raise ValueError(
            f"images[{index}] is a PIL image in mode {image.mode!r}; only 'RGB' and 'L' are accepted: "
            "use image.convert('RGB')"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"images[{index}] is empty: size {image.size}")
    return np.asarray(image)



def check_pixel_values(image: Any, index: int, do_resize: bool, do_rescale: bool) -> None:
    """The value rule both processors apply to ``images[index]`` (a numpy array or a tensor).

    - NaN or infinite values raise ``ValueError``.
    - With resizing, images are read as 8-bit: uint8 passes; other integer-valued data must lie in
      [0, 255] (a 16-bit image is refused, not clipped); other floats must lie in [0, 1].
    - With rescaling, floats already in [0, 1] give a warning (they would be divided by 255 again).
    """
    import warnings

    import torch

    if isinstance(image, np.ndarray) and (image.dtype == np.uint8 or image.size == 0):
        return
    # a copy: the array may be read-only (e.g. from a PIL image), which torch.from_numpy warns about
    tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, copy=True))
    if tensor.dtype == torch.uint8 or tensor.numel() == 0:
        return
    values = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"images[{index}] holds NaN or infinite values")
    low, high = values.min().item(), values.max().item()
    integral = not tensor.is_floating_point() or bool((values == values.round()).all())
    if do_resize:
        if integral and (low < 0 or high > 255):
            raise ValueError(
                f"images[{index}] has integer values in [{low:g}, {high:g}], outside [0, 255]; convert high-bit-depth "
                "images to 8 bits (or to floats in [0, 1]) first"
            )
        if not integral and (low < 0 or high > 1):
            raise ValueError(f"images[{index}] has float values in [{low:g}, {high:g}]: expected [0, 1] or integer values in [0, 255]")
    if do_rescale and index == 0 and low >= 0 and high <= 1:
        warnings.warn("images look already rescaled to [0, 1]; pass do_rescale=False to avoid rescaling them again", stacklevel=3)
