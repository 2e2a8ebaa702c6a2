"""``DeformableDetrImageProcessorFast``: the image processor on torch tensors (torchvision resize), CPU or GPU.

Same pipeline and options as ``DeformableDetrImageProcessor``; the numbers follow the Hugging Face
``DeformableDetrImageProcessorFast`` (transformers 4.57). Speed comes from writing each resized image
straight into one preallocated ``[B, 3, H, W]`` batch and normalizing it in place there (no separate
float copy, pad copy and stack copy per image), and from running on the images' device.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from models.processing.annotations import (
    check_annotations,
    normalize_target_boxes,
    pad_target,
    prepare_target,
    resize_target,
    target_to_torch,
)
from models.processing.batch import BatchFeature
from models.processing.images import channel_layout, check_pixel_values, flatten_images, normalize_data_format, pil_to_array
from models.processing.options import ImageProcessorOptions, ResolvedOptions
from models.processing.sizes import output_size

# PIL filter number -> torchvision mode (tensors support these three).
_INTERPOLATION = {
    0: InterpolationMode.NEAREST_EXACT,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
}


def _to_chw(image: Any, input_data_format: str | None, index: int, device: torch.device | None) -> torch.Tensor:
    """``[C, H, W]`` tensor (C = 1 or 3, uint8 or floating) of any accepted image, on ``device``."""
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, index)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    elif isinstance(image, np.ndarray):
        numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
        if image.dtype == bool or not numeric:
            raise ValueError(f"images[{index}] must hold integers or floats, got dtype {image.dtype}")
        if not image.flags.writeable or any(stride < 0 for stride in image.strides):
            image = np.array(image, order="C")  # a writable copy with positive strides, as torch needs
        tensor = torch.from_numpy(image)
    else:
        tensor = image.detach()
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"images[{index}] must hold integers or floats, got dtype {tensor.dtype}")
    layout = channel_layout(tuple(tensor.shape), input_data_format, index)
    if layout == "none":
        tensor = tensor.unsqueeze(0)
    elif layout == "last":
        tensor = tensor.permute(2, 0, 1)
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def _resize_masks(masks: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Nearest (exact) resize of bool masks ``[N, H, W]``."""
    if masks.shape[0] == 0:
        return torch.zeros((0, *new_size), dtype=torch.bool, device=masks.device)
    resized = TF.resize(masks.to(torch.uint8)[:, None], list(new_size), interpolation=InterpolationMode.NEAREST_EXACT)
    return resized[:, 0] > 0


def _pad_masks(masks: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros((masks.shape[0], *padded_size), dtype=masks.dtype, device=masks.device)
    out[:, : masks.shape[1], : masks.shape[2]] = masks
    return out


def _normalization(options: ResolvedOptions, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """Per-channel ``mean``, ``std`` (``[3, 1, 1]``) and a plain ``scale``, with rescaling folded into mean/std."""
    if options.do_normalize:
        mean = torch.tensor(options.image_mean, device=device)
        std = torch.tensor(options.image_std, device=device)
        if options.do_rescale:
            # (x * f - m) / s computed as (x - m / f) / (s / f), one pass fewer.
            mean = mean * (1.0 / options.rescale_factor)
            std = std * (1.0 / options.rescale_factor)
        return mean.view(3, 1, 1), std.view(3, 1, 1), None
    if options.do_rescale:
        return None, None, options.rescale_factor
    return None, None, None


class DeformableDetrImageProcessorFast(ImageProcessorOptions):
    """Fast Deformable DETR image processor on torch tensors (also PIL images and numpy arrays), batched.

    Takes the same arguments as ``DeformableDetrImageProcessor``; ``resample`` must be nearest (0),
    bilinear (2, default) or bicubic (3). ``preprocess(..., device="cuda")`` moves the images there first;
    tensors already on a GPU are processed where they are. Always returns torch tensors.
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
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare ``images`` (and their COCO ``annotations``) for the model.

        Returns a ``BatchFeature`` with ``pixel_values`` ``[B, 3, H, W]``, ``pixel_mask`` int64 ``[B, H, W]``
        when padding, and with annotations ``labels``: one dict of tensors per image. Without padding,
        images of different sizes come back as a list of ``[3, H_i, W_i]`` tensors (an error with
        ``return_tensors="pt"``).
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
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt' for the fast processor, got {return_tensors!r}")
        if data_format != "channels_first":
            raise ValueError(f"data_format must be 'channels_first' for the fast processor, got {data_format!r}")
        if options.do_resize and options.resample not in _INTERPOLATION:
            raise ValueError(f"resample must be 0 (nearest), 2 (bilinear) or 3 (bicubic), got {options.resample}")
        layout = normalize_data_format(input_data_format)
        device = torch.device(device) if device is not None else None
        image_list = flatten_images(images)
        targets_in = check_annotations(annotations, options.format, len(image_list), bool(return_segmentation_masks))
        tensors = [_to_chw(image, layout, index, device) for index, image in enumerate(image_list)]
        for index, tensor in enumerate(tensors):
            check_pixel_values(tensor, index, options.do_resize, options.do_rescale)
        device = tensors[0].device
        tensors = [tensor.to(device) for tensor in tensors]

        targets = None
        if targets_in is not None:
            targets = [
                target_to_torch(
                    prepare_target(
                        target, options.format, tuple(tensor.shape[1:]), return_segmentation_masks, masks_path
                    ),
                    device,
                )
                for target, tensor in zip(targets_in, tensors)
            ]

        resized = []
        for index, tensor in enumerate(tensors):
            orig_size = tuple(tensor.shape[1:])
            if options.do_resize:
                new_size = output_size(orig_size[0], orig_size[1], options.size)
                interpolation = _INTERPOLATION[options.resample]
                tensor = TF.resize(tensor, list(new_size), interpolation=interpolation, antialias=True)
                if targets is not None:
                    targets[index] = resize_target(targets[index], orig_size, new_size, _resize_masks)
            if targets is not None and options.do_convert_annotations:
                targets[index] = normalize_target_boxes(targets[index], new_size if options.do_resize else orig_size)
            resized.append(tensor)

        mean, std, scale = _normalization(options, device)
        if options.do_normalize or options.do_rescale:
            dtype = torch.float32
        else:
            dtype = resized[0].dtype
            for tensor in resized[1:]:
                dtype = torch.promote_types(dtype, tensor.dtype)

        sizes = [tuple(tensor.shape[1:]) for tensor in resized]
        data: dict[str, Any] = {}
        if options.do_pad:
            padded_size = _padded_size(sizes, options.pad_size)
            pixel_values = torch.zeros((len(resized), 3, *padded_size), dtype=dtype, device=device)
            pixel_mask = torch.zeros((len(resized), *padded_size), dtype=torch.int64, device=device)
            regions = [pixel_values[i, :, :height, :width] for i, (height, width) in enumerate(sizes)]
            for i, (height, width) in enumerate(sizes):
                pixel_mask[i, :height, :width] = 1
                if targets is not None:
                    targets[i] = pad_target(
                        targets[i], (height, width), padded_size, options.do_convert_annotations, _pad_masks
                    )
            data["pixel_mask"] = pixel_mask
        elif len(set(sizes)) == 1:
            pixel_values = torch.empty((len(resized), 3, *sizes[0]), dtype=dtype, device=device)
            regions = list(pixel_values)
        elif return_tensors == "pt":
            raise ValueError(
                f"return_tensors='pt' cannot stack unpadded images of different sizes {sorted(set(sizes))}: "
                "pass do_pad=True or return_tensors=None"
            )
        else:
            pixel_values = [torch.empty((3, *size), dtype=dtype, device=device) for size in sizes]
            regions = pixel_values
        for region, tensor in zip(regions, resized):
            region.copy_(tensor)  # uint8 -> float and grayscale -> 3 channels on the way
            if mean is not None:
                region.sub_(mean).div_(std)
            elif scale is not None:
                region.mul_(scale)

        data = {"pixel_values": pixel_values, **data}
        if targets is not None:
            data["labels"] = targets
        return BatchFeature(data, return_tensors=None)


def _padded_size(sizes: list[tuple[int, int]], pad_size: dict[str, int] | None) -> tuple[int, int]:
    max_height = max(size[0] for size in sizes)
    max_width = max(size[1] for size in sizes)
    if pad_size is None:
        return max_height, max_width
    if pad_size["height"] < max_height or pad_size["width"] < max_width:
        raise ValueError(
            f"pad_size {pad_size} is smaller than the largest processed image ({max_height}x{max_width})"
        )
    return pad_size["height"], pad_size["width"]
