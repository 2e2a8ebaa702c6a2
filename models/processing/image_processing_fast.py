"""``DeformableDetrImageProcessorFast``: the image processor on torch tensors (torchvision resize), CPU or GPU.

Same pipeline and options as ``DeformableDetrImageProcessor``; the numbers follow the Hugging Face
``DeformableDetrImageProcessorFast`` (transformers 4.57). Speed comes from writing each resized image
straight into one preallocated ``[B, 3, H, W]`` batch and normalizing it in place there (no separate
float copy, pad copy and stack copy per image), and from running on the images' device.
"""

from __future__ import annotations

import pathlib
import warnings
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
    pad_annotation,
    pad_target,
    prepare_target,
    resize_target,
    target_to_torch,
)
from models.processing.batch import BatchFeature
from models.processing.images import channel_layout, check_pixel_values, flatten_images, normalize_data_format, pil_layout, pil_to_array
from models.processing.options import ImageProcessorOptions, ResolvedOptions, _resample_int, check_keyword
from models.processing.sizes import normalize_size, output_size

# PIL filter number -> torchvision mode (tensors support these four; LANCZOS through torch's antialiased
# "lanczos" interpolation where the installed torch has it, else through ``lanczos_resize`` below).
_INTERPOLATION = {
    0: InterpolationMode.NEAREST_EXACT,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
}
_NATIVE_LANCZOS: bool | None = None


def _native_lanczos() -> bool:
    """Whether torchvision resizes tensors with LANCZOS on the installed torch (checked once)."""
    global _NATIVE_LANCZOS
    if _NATIVE_LANCZOS is None:
        try:
            TF.resize(torch.zeros(1, 4, 4), [2, 2], interpolation=InterpolationMode.LANCZOS, antialias=True)
            _NATIVE_LANCZOS = True
        except (ValueError, NotImplementedError, RuntimeError):
            _NATIVE_LANCZOS = False
    return _NATIVE_LANCZOS


def _lanczos_matrix(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """``[out_size, in_size]`` weights of an antialiased Lanczos-3 resampling (PIL's filter and support)."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    centers = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale
    first = torch.clamp(torch.floor(centers - 3.0 * stretch + 0.5), min=0)
    last = torch.clamp(torch.floor(centers + 3.0 * stretch + 0.5), max=in_size)
    source = torch.arange(in_size, dtype=torch.float64, device=device)
    x = (source[None, :] - centers[:, None] + 0.5) / stretch
    weights = torch.where(x.abs() < 3.0, torch.sinc(x) * torch.sinc(x / 3.0), torch.zeros_like(x))
    inside = (source[None, :] >= first[:, None]) & (source[None, :] < last[:, None])
    weights = weights * inside
    return weights / weights.sum(dim=1, keepdim=True)


def lanczos_resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased Lanczos-3 resize of ``[..., C, H, W]`` to ``size`` (height, width), on any torch version and device.

    uint8 input is rounded and clamped back to uint8; floating input keeps its dtype. Used when torch has no
    native ``"lanczos"`` interpolation (same filter and support, so the two agree to float rounding).
    """
    height, width = int(size[0]), int(size[1])
    rows = _lanczos_matrix(image.shape[-2], height, image.device)
    cols = _lanczos_matrix(image.shape[-1], width, image.device)
    if image.dtype == torch.uint8:
        # Two 8-bit passes, horizontal then vertical, as PIL and torch's native uint8 kernels do.
        wide = (image.to(torch.float64) @ cols.T).round_().clamp_(0, 255)
        return (rows @ wide).round_().clamp_(0, 255).to(torch.uint8)
    out = rows @ image.to(torch.float64) @ cols.T
    return out.to(image.dtype if image.is_floating_point() else torch.float32)


def _resize(image: torch.Tensor, size: Sequence[int], interpolation: InterpolationMode, **kwargs: Any) -> torch.Tensor:
    """torchvision's resize (antialiased by default), LANCZOS through ``lanczos_resize`` where torch lacks it."""
    if interpolation == InterpolationMode.LANCZOS and not _native_lanczos():
        if kwargs.get("antialias", True) is False:
            raise ValueError("LANCZOS interpolation requires antialias=True")
        return lanczos_resize(image, size)
    return TF.resize(image, list(size), interpolation=interpolation, **{"antialias": True, **kwargs})


def _size_dict(size: Any) -> dict[str, int]:
    """A ``size`` given as a dict, an int/pair, or an object with attributes (transformers' ``SizeDict``)."""
    if isinstance(size, (Mapping, int, tuple, list)):
        return normalize_size(size)
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    found = {key: getattr(size, key, None) for key in keys}
    return normalize_size({key: value for key, value in found.items() if value is not None})


def _interpolation(value: Any) -> InterpolationMode:
    if value is None:
        return InterpolationMode.BILINEAR
    if isinstance(value, InterpolationMode):
        return value
    number = _resample_int(value)
    if number not in _INTERPOLATION:
        raise ValueError(f"interpolation must be nearest (0), LANCZOS (1), bilinear (2) or bicubic (3), got {value!r}")
    return _INTERPOLATION[number]


def _to_chw(image: Any, input_data_format: str | None, index: int, device: torch.device | None) -> torch.Tensor:
    """``[C, H, W]`` tensor (C = 1 or 3, uint8 or floating) of any accepted image, on ``device``.

    The layout of a PIL image is known (``input_data_format`` is for arrays); an array's is
    ``input_data_format`` or, when that is ``None``, guessed by :func:`channel_layout`.
    """
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image, index)
        input_data_format = pil_layout(array)
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

    Takes the same arguments as ``DeformableDetrImageProcessor``; ``resample`` must be nearest (0), LANCZOS
    (1), bilinear (2, default) or bicubic (3). Also takes the ``transformers`` fast processor's defaults for
    ``preprocess``: ``device`` (images are moved there first; tensors already on a GPU are processed where
    they are), ``return_segmentation_masks``, ``do_convert_rgb`` (PIL images of other modes converted with
    ``.convert("RGB")``), ``input_data_format``, ``return_tensors`` (None or "pt"), ``data_format``
    ("channels_first") and ``default_to_square``. Always returns torch tensors.
    """

    _flavour = "fast"

    # ---- single steps, with the signatures of transformers' DeformableDetrImageProcessorFast ---------------

    def resize(
        self, image: torch.Tensor, size: Any, interpolation: InterpolationMode | int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Resize ``[..., C, H, W]`` by the ``size`` rule of ``preprocess`` (torchvision, antialiased).

        Args:
            image: a tensor ``[C, H, W]`` or a batch ``[B, C, H, W]`` of one size.
            size: ``{"shortest_edge", "longest_edge"}``, ``{"height", "width"}`` or ``{"max_height", "max_width"}``
                (a dict or transformers' ``SizeDict``).
            interpolation: a torchvision ``InterpolationMode`` or a PIL filter (default bilinear; LANCZOS works).
            kwargs: passed to ``torchvision.transforms.v2.functional.resize`` (``antialias``, ``max_size``).
        """
        if not isinstance(image, torch.Tensor) or image.ndim < 3:
            raise TypeError(f"image must be a torch tensor [..., C, H, W], got {type(image).__name__}")
        new_size = output_size(image.shape[-2], image.shape[-1], _size_dict(size))
        return _resize(image, new_size, _interpolation(interpolation), **kwargs)

    def rescale(self, image: torch.Tensor, scale: float, **kwargs: Any) -> torch.Tensor:
        """``image * scale`` (other keywords are ignored with a warning, as transformers ignores them)."""
        if kwargs:
            warnings.warn(f"rescale: unused keyword arguments {sorted(kwargs)} are ignored", UserWarning, stacklevel=2)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch tensor, got {type(image).__name__}")
        return image * scale

    def normalize(
        self, image: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float], **kwargs: Any
    ) -> torch.Tensor:
        """``(image - mean) / std`` per channel of a floating ``[..., C, H, W]`` tensor (torchvision's normalize)."""
        if kwargs:
            warnings.warn(f"normalize: unused keyword arguments {sorted(kwargs)} are ignored", UserWarning, stacklevel=2)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch tensor, got {type(image).__name__}")
        channels = image.shape[-3]
        mean = [mean] * channels if isinstance(mean, (int, float)) else mean
        std = [std] * channels if isinstance(std, (int, float)) else std
        return TF.normalize(image, mean, std)

    def pad(
        self,
        image: torch.Tensor,
        padded_size: tuple[int, int],
        annotation: dict[str, Any] | None = None,
        update_bboxes: bool = True,
        fill: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
        """Pad ``image`` (``[..., C, H, W]``) at the bottom/right with ``fill`` to ``padded_size`` (height, width).

        Returns ``(padded image, pixel_mask int64 [H, W] with 1 on real pixels, annotation)``; the annotation
        (model format: ``boxes``, ``masks``, ``size``, ...) gets padded masks, ``size`` = ``padded_size`` and,
        with ``update_bboxes``, relative boxes rescaled to the padded canvas. An image already of
        ``padded_size`` comes back as is.
        """
        if not isinstance(image, torch.Tensor) or image.ndim < 2:
            raise TypeError(f"image must be a torch tensor [..., H, W], got {type(image).__name__}")
        if len(padded_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in padded_size):
            raise ValueError(f"padded_size must be (height, width) ints, got {padded_size!r}")
        height, width = image.shape[-2:]
        bottom, right = padded_size[0] - height, padded_size[1] - width
        if bottom < 0 or right < 0:
            raise ValueError(f"padded_size {tuple(padded_size)} is smaller than the image ({height}x{width})")
        if (bottom, right) != (0, 0):
            image = TF.pad(image, [0, 0, right, bottom], fill=fill)
            if annotation is not None:
                annotation = pad_annotation(annotation, (height, width), tuple(padded_size), update_bboxes, _pad_masks)
        pixel_mask = torch.zeros(tuple(padded_size), dtype=torch.int64, device=image.device)
        pixel_mask[:height, :width] = 1
        return image, pixel_mask, annotation

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
        data_format: str | None = None,
        input_data_format: str | None = None,
        pad_size: Any | None = None,
        device: str | torch.device | None = None,
        do_convert_rgb: bool | None = None,
        default_to_square: bool | None = None,
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
                default_to_square=default_to_square,
                kwargs=kwargs,
            )
        )
        return_tensors = check_keyword("return_tensors", return_tensors if return_tensors is not None else self.return_tensors)
        check_keyword("data_format", data_format)
        if options.do_resize and options.resample not in _INTERPOLATION:
            raise ValueError(
                f"resample must be 0 (nearest), 1 (LANCZOS), 2 (bilinear) or 3 (bicubic), got {options.resample}"
            )
        layout = normalize_data_format(input_data_format if input_data_format is not None else self.input_data_format)
        device = check_keyword("device", device if device is not None else self.device)
        if return_segmentation_masks is None:
            return_segmentation_masks = self.return_segmentation_masks
        do_convert_rgb = check_keyword("do_convert_rgb", do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb)
        image_list = flatten_images(images)
        if do_convert_rgb:
            image_list = [
                image.convert("RGB") if isinstance(image, PIL.Image.Image) and image.mode != "RGB" else image
                for image in image_list
            ]
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
                tensor = _resize(tensor, new_size, interpolation)
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
