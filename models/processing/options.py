"""Options shared by the slow and fast image processors: defaults, per-call overrides, checks, saving.

``ImageProcessorOptions`` is the common base of ``DeformableDetrImageProcessor`` and
``DeformableDetrImageProcessorFast``: it holds the constructor arguments (names and defaults of the
Hugging Face processors), resolves the per-call overrides of ``preprocess`` into checked values, reads and
writes ``preprocessor_config.json`` and carries ``post_process_object_detection``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from models.processing.annotations import check_format
from models.processing.postprocess import post_process_object_detection as _post_process_object_detection
from models.processing.sizes import DEFAULT_SIZE, normalize_pad_size, normalize_size

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR
CONFIG_NAME = "preprocessor_config.json"

# Keys found in saved Hugging Face processor configs that carry no processing option.
_BOOKKEEPING_KEYS = frozenset(
    {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class", "auto_map"}
)
# Keys of the reference fast processor's config with no meaning here; accepted only when unset/default.
_UNSET_KEYS = frozenset(
    {
        "crop_size",
        "do_center_crop",
        "do_convert_rgb",
        "return_tensors",
        "input_data_format",
        "device",
        "disable_grouping",
        "return_segmentation_masks",
        "default_to_square",
        "data_format",
    }
)


@dataclass(frozen=True)
class ResolvedOptions:
    """The checked options of one ``preprocess`` call."""

    format: str
    do_resize: bool
    size: dict[str, int]
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    do_convert_annotations: bool
    do_pad: bool
    pad_size: dict[str, int] | None


def _three_floats(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (one per RGB channel), got {value!r}")
    floats = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        floats.append(float(item))
    return floats[0], floats[1], floats[2]


def _resample_int(resample: Any) -> int:
    value = getattr(resample, "value", resample)
    if isinstance(value, bool) or not isinstance(value, int) or value not in range(6):
        raise ValueError(f"resample must be a PIL.Image.Resampling filter (0..5), got {resample!r}")
    return value


class ImageProcessorOptions:
    """Constructor arguments, per-call resolution and (de)serialisation of the image processor options."""

    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        format: str = "coco_detection",
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int = BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_annotations: bool | None = None,
        do_pad: bool = True,
        pad_size: Sequence[int] | Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        if "pad_and_return_pixel_mask" in kwargs:
            warnings.warn("pad_and_return_pixel_mask is deprecated: use do_pad", FutureWarning, stacklevel=2)
            do_pad = kwargs.pop("pad_and_return_pixel_mask")
        max_size = kwargs.pop("max_size", None)
        if max_size is not None:
            warnings.warn("max_size is deprecated: use size['longest_edge']", FutureWarning, stacklevel=2)
        for key in _UNSET_KEYS & set(kwargs):
            if kwargs[key] not in (None, False, "channels_first"):
                raise ValueError(f"{key}={kwargs[key]!r} is not supported by {type(self).__name__}")
        unknown = sorted(set(kwargs) - _BOOKKEEPING_KEYS - _UNSET_KEYS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {unknown}")

        size = dict(DEFAULT_SIZE) if size is None else size
        if max_size is not None and isinstance(size, int):
            size = {"shortest_edge": size, "longest_edge": max_size}
        elif max_size is not None and isinstance(size, Mapping) and "longest_edge" in size:
            size = {**size, "longest_edge": max_size}
        self.format = check_format(format)
        self.do_resize = bool(do_resize)
        self.size = normalize_size(size)
        self.resample = _resample_int(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = rescale_factor
        self.do_normalize = bool(do_normalize)
        self.image_mean = _three_floats(IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _three_floats(IMAGENET_DEFAULT_STD if image_std is None else image_std, "image_std")
        # Boxes are converted to relative (cx, cy, w, h) by default exactly when images are normalized.
        self.do_convert_annotations = (
            self.do_normalize if do_convert_annotations is None else bool(do_convert_annotations)
        )
        self.do_pad = bool(do_pad)
        self.pad_size = normalize_pad_size(pad_size)

    def resolve(self, overrides: dict[str, Any]) -> ResolvedOptions:
        """Fill the ``None`` entries of ``overrides`` from this processor and check everything."""
        kwargs = overrides.pop("kwargs", {}) or {}
        if "pad_and_return_pixel_mask" in kwargs:
            warnings.warn("pad_and_return_pixel_mask is deprecated: use do_pad", FutureWarning, stacklevel=3)
            overrides["do_pad"] = kwargs.pop("pad_and_return_pixel_mask")
        if "max_size" in kwargs:
            warnings.warn("max_size is deprecated: use size['longest_edge']", FutureWarning, stacklevel=3)
            base = normalize_size(overrides.get("size") or self.size)
            overrides["size"] = {**base, "longest_edge": kwargs.pop("max_size")} if "longest_edge" in base else base
        if kwargs:
            raise TypeError(f"preprocess got unexpected arguments {sorted(kwargs)}")

        def pick(name: str) -> Any:
            value = overrides.get(name)
            return getattr(self, name) if value is None else value

        rescale_factor = pick("rescale_factor")
        do_rescale = bool(pick("do_rescale"))
        if do_rescale and (
            isinstance(rescale_factor, bool)
            or not isinstance(rescale_factor, (int, float))
            or not math.isfinite(rescale_factor)
            or rescale_factor <= 0
        ):
            raise ValueError(f"rescale_factor must be a positive number, got {rescale_factor!r}")
        image_std = _three_floats(pick("image_std"), "image_std")
        if any(value == 0 for value in image_std):
            raise ValueError(f"image_std must not contain 0, got {image_std}")
        do_normalize = bool(pick("do_normalize"))
        return ResolvedOptions(
            format=check_format(pick("format")),
            do_resize=bool(pick("do_resize")),
            size=normalize_size(pick("size")),
            resample=_resample_int(pick("resample")),
            do_rescale=do_rescale,
            rescale_factor=float(rescale_factor),
            do_normalize=do_normalize,
            image_mean=_three_floats(pick("image_mean"), "image_mean"),
            image_std=image_std,
            do_convert_annotations=bool(pick("do_convert_annotations")),
            do_pad=bool(pick("do_pad")),
            pad_size=normalize_pad_size(pick("pad_size")),
        )

    def __call__(self, images: Any, annotations: Any = None, **kwargs: Any) -> Any:
        """Same as ``preprocess``."""
        return self.preprocess(images, annotations, **kwargs)

    def preprocess(self, images: Any, annotations: Any = None, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[float]] | None = None,
        top_k: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image from ``outputs.logits`` / ``outputs.pred_boxes``.

        See ``models.processing.postprocess.post_process_object_detection``: sigmoid scores, top-k over
        queries x classes, boxes as ``(x0, y0, x1, y1)`` scaled to ``target_sizes`` (height, width),
        scores above ``threshold`` kept. Returns a list of ``{"scores", "labels", "boxes"}``.
        """
        return _post_process_object_detection(outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k)

    # ---- (de)serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict (the keys of a Hugging Face ``preprocessor_config.json``)."""
        return {
            "format": self.format,
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_annotations": self.do_convert_annotations,
            "do_pad": self.do_pad,
            "pad_size": None if self.pad_size is None else dict(self.pad_size),
            "image_processor_type": type(self).__name__,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> "ImageProcessorOptions":
        """Build from a dict of options (e.g. a loaded ``preprocessor_config.json``); ``overrides`` win."""
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        return cls(**{**dict(config), **overrides})

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``preprocessor_config.json`` into ``save_directory``; returns the file path."""
        directory = pathlib.Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"save_directory {str(directory)!r} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return str(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "ImageProcessorOptions":
        """Load from a local directory holding ``preprocessor_config.json`` (or that JSON file itself)."""
        file = pathlib.Path(path)
        if file.is_dir():
            file = file / CONFIG_NAME
        if not file.is_file():
            raise ValueError(f"path: no {CONFIG_NAME} at {str(path)!r} (only local directories are supported)")
        return cls.from_dict(json.loads(file.read_text()), **overrides)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"
