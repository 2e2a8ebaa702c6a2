"""``DeformableDetrImageProcessor``: the slow image processor (PIL resizing, numpy arithmetic).

Per image: prepare the COCO annotation -> resize (PIL) -> rescale -> normalize -> convert boxes to relative
``(cx, cy, w, h)`` -> pad bottom/right to the batch maximum (or ``pad_size``) with a ``pixel_mask``.
The numbers follow the Hugging Face ``DeformableDetrImageProcessor`` (transformers 4.57), so pipelines built on
it carry over.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from models.processing.annotations import (
    check_annotations,
    normalize_target_boxes,
    pad_target,
    prepare_target,
    resize_target,
)
from models.processing.batch import BatchFeature
from models.processing.images import channel_layout, check_pixel_values, flatten_images, normalize_data_format, pil_to_array
from models.processing.options import ImageProcessorOptions, ResolvedOptions
from models.processing.sizes import output_size

_DATA_FORMATS = ("channels_first", "channels_last")


def _to_hwc3(image: Any, input_data_format: str | None, index: int) -> np.ndarray:
    """``[H, W, 3]`` numpy array of any accepted image (grayscale repeated to three channels)."""
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, index)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    else:
        array = np.asarray(image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"images[{index}] must hold integers or floats, got dtype {array.dtype}")
    layout = channel_layout(array.shape, input_data_format, index)
    if layout == "none":
        array = array[:, :, None]
    elif layout == "first":
        array = array.transpose(1, 2, 0)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array


def _pil_ready(image: np.ndarray, index: int) -> tuple[np.ndarray, bool]:
    """uint8 version of ``image`` for PIL and whether it was scaled up from ``[0, 1]``.

    Same rule as the reference: uint8 passes; integer-valued data in ``[0, 255]`` is cast; other floats must
    lie in ``[0, 1]`` and are multiplied by 255 then truncated to uint8.
    """
    if image.dtype == np.uint8:
        return image, False
    if np.allclose(image, image.astype(np.int64)):
        if image.min() < 0 or image.max() > 255:
            raise ValueError(
                f"images[{index}] has integer values in [{image.min()}, {image.max()}], outside [0, 255]"
            )
        return image.astype(np.uint8), False
    if image.min() < 0 or image.max() > 1:
        raise ValueError(
            f"images[{index}] has float values in [{image.min()}, {image.max()}]: expected [0, 1] or "
            "integer values in [0, 255]"
        )
    return (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True


def _resize_image(image: np.ndarray, new_size: tuple[int, int], resample: int, index: int) -> np.ndarray:
    pil_array, scaled = _pil_ready(image, index)
    resized = np.asarray(PIL.Image.fromarray(pil_array).resize((new_size[1], new_size[0]), resample=resample))
    if scaled:
        return (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    return resized


def _resize_masks(masks: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of bool masks ``[N, H, W]`` with PIL."""
    out = np.zeros((masks.shape[0], *new_size), dtype=bool)
    for n, mask in enumerate(masks):
        resized = PIL.Image.fromarray(mask.astype(np.uint8)).resize((new_size[1], new_size[0]), PIL.Image.NEAREST)
        out[n] = np.asarray(resized) > 0
    return out


def _pad_masks(masks: np.ndarray, padded_size: tuple[int, int]) -> np.ndarray:
    out = np.zeros((masks.shape[0], *padded_size), dtype=masks.dtype)
    out[:, : masks.shape[1], : masks.shape[2]] = masks
    return out


def _rescale_and_normalize(image: np.ndarray, options: ResolvedOptions) -> np.ndarray:
    if options.do_rescale:
        image = (image.astype(np.float64) * options.rescale_factor).astype(np.float32)
    if options.do_normalize:
        if not np.issubdtype(image.dtype, np.floating):
            image = image.astype(np.float32)
        mean = np.asarray(options.image_mean, dtype=image.dtype)
        std = np.asarray(options.image_std, dtype=image.dtype)
        image = (image - mean) / std
    return image


class DeformableDetrImageProcessor(ImageProcessorOptions):
    """Slow Deformable DETR image processor for PIL images and numpy arrays (also accepts CPU tensors).

    Args (all can be overridden per call in ``preprocess``):
        format: ``"coco_detection"`` or ``"coco_panoptic"``: the annotation format.
        do_resize / size / resample: resize with PIL; ``size`` is ``{"shortest_edge", "longest_edge"}``
            (default 800 / 1333), ``{"height", "width"}`` or ``{"max_height", "max_width"}``.
        do_rescale / rescale_factor: multiply pixel values (default 1/255).
        do_normalize / image_mean / image_std: ``(x - mean) / std`` per channel (ImageNet by default).
        do_convert_annotations: boxes to relative ``(cx, cy, w, h)`` (default: same as ``do_normalize``).
        do_pad / pad_size: pad bottom/right with zeros to the batch maximum or to ``pad_size``
            ``{"height", "width"}`` and return ``pixel_mask`` (1 = real pixel).
    """

    def preprocess(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_segmentation_masks: bool | None = None,
        masks_path: str | pathlib.Path | None = None,
        do_resize: bool | None = None,
        size: Any | None = None,
        resample: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        do_convert_annotations: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool | None = None,
        format: str | None = None,
        return_tensors: str | None = None,
        data_format: str = "channels_first",
        input_data_format: str | None = None,
        pad_size: Any | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare ``images`` (and their COCO ``annotations``) for the model.

        Returns a ``BatchFeature`` with ``pixel_values`` (``[B, 3, H, W]``, or ``[B, H, W, 3]`` for
        ``data_format="channels_last"``), ``pixel_mask`` int64 ``[B, H, W]`` when padding, and with
        annotations ``labels``: one dict per image (see ``models.processing.annotations``). With
        ``return_tensors=None`` the values are lists of numpy arrays, ``"np"`` stacks them, ``"pt"`` gives
        torch tensors.
        """
        options = self.resolve(
            dict(
                do_resize=do_resize,
                size=size,
                resample=resample,
                do_rescale=do_rescale,
                rescale_factor=rescale_factor,
                do_normalize=do_normalize,
                do_convert_annotations=do_convert_annotations,
                image_mean=image_mean,
                image_std=image_std,
                do_pad=do_pad,
                format=format,
                pad_size=pad_size,
                kwargs=kwargs,
            )
        )
        if data_format not in _DATA_FORMATS:
            raise ValueError(f"data_format must be one of {_DATA_FORMATS}, got {data_format!r}")
        layout = normalize_data_format(input_data_format)
        image_list = flatten_images(images)
        targets_in = check_annotations(annotations, options.format, len(image_list), bool(return_segmentation_masks))
        arrays = [_to_hwc3(image, layout, index) for index, image in enumerate(image_list)]
        for index, array in enumerate(arrays):
            check_pixel_values(array, index, options.do_resize, options.do_rescale)

        targets = None
        if targets_in is not None:
            targets = [
                prepare_target(target, options.format, array.shape[:2], return_segmentation_masks, masks_path)
                for target, array in zip(targets_in, arrays)
            ]

        processed = []
        for index, array in enumerate(arrays):
            orig_size = array.shape[:2]
            if options.do_resize:
                new_size = output_size(orig_size[0], orig_size[1], options.size)
                array = _resize_image(array, new_size, options.resample, index)
                if targets is not None:
                    targets[index] = resize_target(targets[index], orig_size, new_size, _resize_masks)
            array = _rescale_and_normalize(array, options)
            if targets is not None and options.do_convert_annotations:
                targets[index] = normalize_target_boxes(targets[index], array.shape[:2])
            processed.append(array)

        data: dict[str, Any] = {}
        channels_first = data_format == "channels_first"
        if options.do_pad:
            padded_size = _padded_size(processed, options.pad_size)
            # One canvas for the whole batch, written once in the output layout (no later stack/transpose).
            shape = (len(processed), 3, *padded_size) if channels_first else (len(processed), *padded_size, 3)
            canvas = np.zeros(shape, dtype=np.result_type(*processed))
            pixel_mask = np.zeros((len(processed), *padded_size), dtype=np.int64)
            for index, array in enumerate(processed):
                height, width = array.shape[:2]
                if channels_first:
                    canvas[index, :, :height, :width] = array.transpose(2, 0, 1)
                else:
                    canvas[index, :height, :width] = array
                pixel_mask[index, :height, :width] = 1
                if targets is not None:
                    targets[index] = pad_target(
                        targets[index], (height, width), padded_size, options.do_convert_annotations, _pad_masks
                    )
            pixel_values = canvas if return_tensors else list(canvas)
            data["pixel_mask"] = pixel_mask if return_tensors else list(pixel_mask)
        elif channels_first:
            pixel_values = [np.ascontiguousarray(array.transpose(2, 0, 1)) for array in processed]
        else:
            pixel_values = processed
        data = {"pixel_values": pixel_values, **data}
        if targets is not None:
            data["labels"] = targets
        return BatchFeature(data, return_tensors=return_tensors)


def _padded_size(images: list[np.ndarray], pad_size: dict[str, int] | None) -> tuple[int, int]:
    max_height = max(image.shape[0] for image in images)
    max_width = max(image.shape[1] for image in images)
    if pad_size is None:
        return max_height, max_width
    if pad_size["height"] < max_height or pad_size["width"] < max_width:
        raise ValueError(
            f"pad_size {pad_size} is smaller than the largest processed image ({max_height}x{max_width})"
        )
    return pad_size["height"], pad_size["width"]
