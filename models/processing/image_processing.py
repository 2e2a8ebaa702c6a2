"""``DeformableDetrImageProcessor``: the slow image processor (PIL resizing, numpy arithmetic).

Per image: prepare the COCO annotation -> resize (PIL) -> rescale -> normalize -> convert boxes to relative
``(cx, cy, w, h)`` -> pad bottom/right to the batch maximum (or ``pad_size``) with a ``pixel_mask``.
The numbers follow the Hugging Face ``DeformableDetrImageProcessor`` (transformers 4.57), so pipelines built on
it carry over.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from models.processing.annotations import (
    check_annotations,
    normalize_target_boxes,
    pad_annotation,
    pad_target,
    prepare_target,
    resize_target,
)
from models.processing.batch import BatchFeature
from models.processing.images import channel_layout, check_pixel_values, flatten_images, normalize_data_format, pil_layout, pil_to_array
from models.processing.options import BILINEAR, ImageProcessorOptions, ResolvedOptions, _resample_int
from models.processing.sizes import normalize_pad_size, normalize_size, output_size

_DATA_FORMATS = ("channels_first", "channels_last")


def _to_hwc3(image: Any, input_data_format: str | None, index: int) -> np.ndarray:
    """``[H, W, 3]`` numpy array of any accepted image (grayscale repeated to three channels).

    The layout of a PIL image is known (``input_data_format`` is for arrays); an array's is
    ``input_data_format`` or, when that is ``None``, guessed by :func:`channel_layout`.
    """
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, index)
        input_data_format = pil_layout(array)
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


def _image_array(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as a numeric numpy array (the methods' input check)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must hold integers or floats, got dtype {image.dtype}")
    return image


def _layouts(image: np.ndarray, data_format: Any, input_data_format: Any) -> tuple[str, str]:
    """(input layout, output layout) of one image: ``input_data_format`` or inferred; ``data_format`` or the input's."""
    source = channel_layout(image.shape, normalize_data_format(input_data_format), 0)
    target = normalize_data_format(data_format) or source
    if (source == "none") != (target == "none"):
        raise ValueError(f"data_format {data_format!r} does not fit an image of shape {image.shape}")
    return source, target


def _relayout(image: np.ndarray, source: str, target: str) -> np.ndarray:
    if source == target or source == "none":
        return image
    return image.transpose(1, 2, 0) if source == "first" else image.transpose(2, 0, 1)


def _spatial(image: np.ndarray, layout: str) -> tuple[int, int]:
    return tuple(image.shape[1:]) if layout == "first" else tuple(image.shape[:2])


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

    # ---- single steps, with the signatures of transformers' DeformableDetrImageProcessor -------------------

    def resize(
        self,
        image: np.ndarray,
        size: Mapping[str, int] | int | Sequence[int],
        resample: int = BILINEAR,
        data_format: str | None = None,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize one image with PIL by the ``size`` rule of ``preprocess``.

        Args:
            image: ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` array; uint8, integer-valued in [0, 255], or
                floats in [0, 1] (scaled to uint8 for PIL and back to float32 afterwards).
            size: ``{"shortest_edge", "longest_edge"}``, ``{"height", "width"}`` or ``{"max_height", "max_width"}``.
            resample: PIL filter (``PIL.Image.Resampling`` or its int, LANCZOS included).
            data_format: output channel layout (default: the input's).
            input_data_format: channel layout of ``image`` (default: inferred).
            kwargs: ``max_size`` (deprecated), ``reducing_gap`` (PIL), ``return_numpy`` (False: a PIL image).

        Returns the resized array (uint8 for 8-bit input, float32 for [0, 1] input).
        """
        max_size = kwargs.pop("max_size", None)
        reducing_gap = kwargs.pop("reducing_gap", None)
        return_numpy = kwargs.pop("return_numpy", True)
        if kwargs:
            raise TypeError(f"resize() got unexpected keyword arguments {sorted(kwargs)}")
        image = _image_array(image)
        size = normalize_size(size)
        if max_size is not None:
            warnings.warn("max_size is deprecated: use size['longest_edge']", FutureWarning, stacklevel=2)
            if "longest_edge" in size:
                size = {**size, "longest_edge": max_size}
        resample = _resample_int(BILINEAR if resample is None else resample)
        source, target = _layouts(image, data_format, input_data_format)
        height, width = _spatial(image, source)
        new_height, new_width = output_size(height, width, size)
        hwc = _relayout(image, source, "last")
        pil_array, scaled = _pil_ready(hwc[:, :, 0] if hwc.ndim == 3 and hwc.shape[2] == 1 else hwc, 0)
        resized = PIL.Image.fromarray(pil_array).resize((new_width, new_height), resample=resample, reducing_gap=reducing_gap)
        if not return_numpy:
            return resized
        out = np.asarray(resized)
        if source != "none" and out.ndim == 2:
            out = out[:, :, None]
        out = _relayout(out, "last" if source != "none" else "none", target)
        if scaled:
            out = (out.astype(np.float64) * (1 / 255)).astype(np.float32)
        return np.ascontiguousarray(out)

    def rescale(
        self,
        image: np.ndarray,
        rescale_factor: float,
        data_format: str | None = None,
        input_data_format: str | None = None,
    ) -> np.ndarray:
        """``image * rescale_factor`` computed in float64, returned as float32 (in ``data_format`` if given)."""
        image = _image_array(image)
        if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, (int, float)):
            raise ValueError(f"rescale_factor must be a number, got {rescale_factor!r}")
        out = image.astype(np.float64) * rescale_factor
        if data_format is not None:
            source, target = _layouts(image, data_format, input_data_format)
            out = _relayout(out, source, target)
        return out.astype(np.float32)

    def normalize(
        self,
        image: np.ndarray,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        data_format: str | None = None,
        input_data_format: str | None = None,
    ) -> np.ndarray:
        """``(image - mean) / std`` per channel; integer images become float32, float images keep their dtype.

        ``mean`` / ``std``: one number, or one per channel (a ``ValueError`` otherwise).
        """
        image = _image_array(image)
        source, target = _layouts(image, data_format, input_data_format)
        channels = 1 if source == "none" else image.shape[0 if source == "first" else -1]
        if not np.issubdtype(image.dtype, np.floating):
            image = image.astype(np.float32)
        stats = []
        for name, value in (("mean", mean), ("std", std)):
            values = [value] * channels if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
            if len(values) != channels:
                raise ValueError(f"{name} must have {channels} elements (one per channel), got {len(values)}")
            stats.append(np.asarray(values, dtype=image.dtype))
        shape = (-1, 1, 1) if source == "first" else (-1,)
        out = (image - stats[0].reshape(shape)) / stats[1].reshape(shape)
        return _relayout(out, source, target)

    def pad(
        self,
        images: Sequence[np.ndarray],
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        constant_values: float = 0,
        return_pixel_mask: bool = True,
        return_tensors: str | None = None,
        data_format: str | None = None,
        input_data_format: str | None = None,
        update_bboxes: bool = True,
        pad_size: Mapping[str, int] | None = None,
    ) -> BatchFeature:
        """Pad ``images`` at the bottom/right with ``constant_values`` to the largest height and width (or ``pad_size``).

        Args:
            images: list of ``[C, H, W]`` / ``[H, W, C]`` arrays.
            annotations: one model-format dict per image (``boxes``, ``masks``, ``size``, ...): masks are padded,
                ``size`` becomes the padded size, relative boxes are rescaled when ``update_bboxes``.
            return_pixel_mask: add ``pixel_mask`` (int64 ``[H, W]`` per image, 1 on real pixels).
            return_tensors: ``None`` (lists of arrays), ``"np"`` or ``"pt"`` (stacked).
            data_format / input_data_format: output / input channel layout (default: the input's / inferred).
            pad_size: ``{"height", "width"}`` (default: this processor's ``pad_size``, else the batch maximum).

        Returns a ``BatchFeature`` with ``pixel_values``, ``pixel_mask`` and, with annotations, ``labels``.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError(f"images must be a non-empty list of arrays, got {type(images).__name__}")
        images = [_image_array(image, f"images[{index}]") for index, image in enumerate(images)]
        if isinstance(annotations, Mapping):
            annotations = [annotations]
        if annotations is not None and len(annotations) != len(images):
            raise ValueError(f"annotations: {len(annotations)} for {len(images)} images")
        if isinstance(constant_values, bool) or not isinstance(constant_values, (int, float)):
            raise ValueError(f"constant_values must be a number, got {constant_values!r}")
        layouts = [_layouts(image, data_format, input_data_format) for image in images]
        sizes = [_spatial(image, source) for image, (source, _) in zip(images, layouts)]
        pad_size = normalize_pad_size(pad_size if pad_size is not None else self.pad_size)
        padded_size = _padded_size(sizes, pad_size)
        pixel_values, pixel_masks, labels = [], [], []
        for index, (image, (source, target), size) in enumerate(zip(images, layouts, sizes)):
            spatial = [(0, padded_size[0] - size[0]), (0, padded_size[1] - size[1])]
            pad_width = [(0, 0), *spatial] if source == "first" else spatial + [(0, 0)] * (image.ndim - 2)
            pixel_values.append(_relayout(np.pad(image, pad_width, mode="constant", constant_values=constant_values), source, target))
            mask = np.zeros(padded_size, dtype=np.int64)
            mask[: size[0], : size[1]] = 1
            pixel_masks.append(mask)
            if annotations is not None:
                labels.append(pad_annotation(annotations[index], size, padded_size, update_bboxes, _pad_masks))
        data: dict[str, Any] = {"pixel_values": pixel_values}
        if return_pixel_mask:
            data["pixel_mask"] = pixel_masks
        if annotations is not None:
            data["labels"] = labels
        return BatchFeature(data, return_tensors=return_tensors)

    # ---- the whole pipeline -------------------------------------------------------------------------------

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
            padded_size = _padded_size([array.shape[:2] for array in processed], options.pad_size)
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


def _padded_size(sizes: Sequence[tuple[int, int]], pad_size: dict[str, int] | None) -> tuple[int, int]:
    max_height = max(size[0] for size in sizes)
    max_width = max(size[1] for size in sizes)
    if pad_size is None:
        return max_height, max_width
    if pad_size["height"] < max_height or pad_size["width"] < max_width:
        raise ValueError(
            f"pad_size {pad_size} is smaller than the largest processed image ({max_height}x{max_width})"
        )
    return pad_size["height"], pad_size["width"]
