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
from models.processing.images import normalize_data_format
from models.processing.postprocess import post_process_object_detection as _post_process_object_detection
from models.processing.sizes import DEFAULT_SIZE, normalize_pad_size, normalize_size

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR
CONFIG_NAME = "preprocessor_config.json"

# ---- keywords of the transformers processors beyond the regular options -------------------------------
#
# transformers never rejects a keyword in a processor's constructor (an unknown one becomes an attribute) and
# only logs "Unused or unrecognized kwargs" in ``preprocess``. Here every keyword it accepts is accepted too,
# and this table says what each one does in each class; a keyword in no table gives a ``UserWarning`` naming
# it (and is ignored), never a silent attribute.

HONOUR = "honour"  # stored by the constructor and used as the per-call default
IGNORE = "ignore"  # accepted; a value other than the unset ones warns that it has no effect (as in transformers)
REFUSE = "refuse"  # accepted when unset; another value raises NotImplementedError naming it
SILENT = "silent"  # accepted and ignored without a word (bookkeeping keys, speed knobs of the reference)


@dataclass(frozen=True)
class Keyword:
    """How one keyword of the ``transformers`` processors is treated here.

    ``unset``: the values that mean "not given" (accepted silently whatever the action). ``slow`` / ``fast``:
    the action in the constructor of ``DeformableDetrImageProcessor`` / ``...Fast``; ``fast_call``: the action
    when passed to the fast processor's ``preprocess`` (the slow ``preprocess`` takes the reference's explicit
    arguments and warns about any other keyword, as the reference does). ``why``: said in warnings/errors.
    """

    unset: tuple[Any, ...]
    slow: str
    fast: str
    fast_call: str
    why: str


KEYWORDS: dict[str, Keyword] = {
    "device": Keyword((None,), IGNORE, HONOUR, HONOUR, "where the fast processor works and returns tensors"),
    "return_segmentation_masks": Keyword((None,), IGNORE, HONOUR, HONOUR, "default of preprocess(return_segmentation_masks=)"),
    "do_convert_rgb": Keyword((None,), IGNORE, HONOUR, HONOUR, "PIL images of other modes converted with .convert('RGB')"),
    "input_data_format": Keyword((None,), IGNORE, HONOUR, HONOUR, "channel axis of the input images"),
    "return_tensors": Keyword((None,), IGNORE, HONOUR, HONOUR, "the fast processor returns torch tensors"),
    "data_format": Keyword((None, "channels_first"), IGNORE, HONOUR, HONOUR, "only channels_first output"),
    "default_to_square": Keyword((None, False), IGNORE, HONOUR, HONOUR, "an int size means a square"),
    "disable_grouping": Keyword((None, False, True), SILENT, SILENT, SILENT, "a speed knob of the reference"),
    "do_center_crop": Keyword(
        (None, False), IGNORE, IGNORE, IGNORE, "Deformable DETR processors never crop (transformers ignores it too)"
    ),
    "crop_size": Keyword((None,), IGNORE, IGNORE, IGNORE, "Deformable DETR processors never crop (transformers ignores it too)"),
}
# Keys of saved configs that carry no processing option.
for _name in ("image_processor_type", "feature_extractor_type", "processor_class", "_processor_class", "auto_map"):
    KEYWORDS[_name] = Keyword((), SILENT, SILENT, SILENT, "bookkeeping key of saved configs")


def take_keywords(kwargs: dict[str, Any], owner: str, flavour: str, where: str, stacklevel: int = 3) -> dict[str, Any]:
    """Apply ``KEYWORDS`` to the leftover ``kwargs`` of a constructor or ``preprocess`` call.

    Args:
        kwargs: the keywords no explicit parameter took (consumed: the dict is emptied).
        owner: the class name, for messages.
        flavour: ``"slow"`` or ``"fast"``.
        where: ``"constructor"`` or ``"preprocess"``.

    Returns the honoured keywords (name -> value); warns about ignored and unknown ones (``UserWarning``
    naming them) and raises ``NotImplementedError`` for refused ones with a value that is not unset.
    """
    honoured: dict[str, Any] = {}
    unused = []
    for name in sorted(kwargs):
        value = kwargs.pop(name)
        rule = KEYWORDS.get(name)
        if rule is None:
            unused.append(name)
            continue
        action = {"constructor": {"slow": rule.slow, "fast": rule.fast}[flavour], "preprocess": rule.fast_call if flavour == "fast" else IGNORE}[where]
        if action == HONOUR:
            honoured[name] = value
        elif action == SILENT or _is_unset(value, rule.unset):
            continue
        elif action == REFUSE:
            raise NotImplementedError(f"{owner}: {name}={value!r} is not implemented ({rule.why})")
        else:
            why = f"only the fast processor uses it ({rule.why})" if flavour == "slow" and rule.fast == HONOUR else rule.why
            warnings.warn(f"{owner} ignores {name}={value!r}: {why}", UserWarning, stacklevel=stacklevel)
    if unused:
        warnings.warn(
            f"{owner} {where}: unused or unrecognized keyword arguments {unused} are ignored", UserWarning, stacklevel=stacklevel
        )
    return honoured


def _is_unset(value: Any, unset: tuple[Any, ...]) -> bool:
    return any(value is item or (type(value) is type(item) and value == item) for item in unset)


def check_keyword(name: str, value: Any) -> Any:
    """Check (and canonicalise) the value of an honoured ``KEYWORDS`` entry; ``None`` means unset."""
    if value is None:
        return None
    if name == "device":
        if not isinstance(value, (str, torch.device)):
            raise ValueError(f"device must be a str or torch.device, got {value!r}")
        try:
            return torch.device(value)
        except RuntimeError as error:
            raise ValueError(f"device: {error}") from error
    if name in ("return_segmentation_masks", "do_convert_rgb", "default_to_square"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool or None, got {value!r}")
        return value
    if name == "input_data_format":
        normalize_data_format(value)
        return getattr(value, "value", value)
    if name == "return_tensors":
        if getattr(value, "value", value) != "pt":
            raise ValueError(f"return_tensors must be None or 'pt' for the fast processor, got {value!r}")
        return "pt"
    if name == "data_format":
        if getattr(value, "value", value) != "channels_first":
            raise ValueError(f"data_format must be 'channels_first' for the fast processor, got {value!r}")
        return "channels_first"
    return value  # pragma: no cover - every honoured keyword is listed above


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
    _flavour = "slow"  # which column of KEYWORDS applies

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
        honoured = take_keywords(kwargs, type(self).__name__, self._flavour, "constructor")
        for name, rule in KEYWORDS.items():
            if (rule.slow if self._flavour == "slow" else rule.fast) == HONOUR:
                setattr(self, name, check_keyword(name, honoured.get(name)))

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
        take_keywords(kwargs, type(self).__name__, self._flavour, "preprocess", stacklevel=4)

        def pick(name: str) -> Any:
            value = overrides.get(name)
            return getattr(self, name, None) if value is None else value

        size = pick("size")
        if pick("default_to_square") and isinstance(size, int) and not isinstance(size, bool):
            size = {"height": size, "width": size}  # transformers' default_to_square=True reading of an int

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
            size=normalize_size(size),
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
        nms_threshold: float | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image from ``outputs.logits`` / ``outputs.pred_boxes``.

        See ``models.processing.postprocess.post_process_object_detection``: sigmoid scores, top-k over
        queries x classes, boxes as ``(x0, y0, x1, y1)`` scaled to ``target_sizes`` (height, width),
        scores above ``threshold`` kept, then, when ``nms_threshold`` (in (0, 1]) is given, class-aware
        non-maximum suppression at that IoU (off by default: ``transformers``' results).
        Returns a list of ``{"scores", "labels", "boxes"}``.
        """
        return _post_process_object_detection(
            outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k, nms_threshold=nms_threshold
        )

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
            **self._honoured_keywords(),
        }

    def _honoured_keywords(self) -> dict[str, Any]:
        """The honoured ``KEYWORDS`` set on this processor (JSON-able; unset ones left out)."""
        out = {}
        for name, rule in KEYWORDS.items():
            value = getattr(self, name, None) if (rule.slow if self._flavour == "slow" else rule.fast) == HONOUR else None
            if value is not None:
                out[name] = str(value) if isinstance(value, torch.device) else value
        return out

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
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        **kwargs: Any,
    ) -> "ImageProcessorOptions":
        """Load ``preprocessor_config.json`` from a directory, the JSON file itself, or a Hub repo id.

        A repo id (``"SenseTime/deformable-detr"``) is resolved by ``models.common.hub.resolve_file`` through
        ``huggingface_hub`` and its cache, honouring ``revision``, ``cache_dir``, ``local_files_only``,
        ``token``, ``force_download``, ``subfolder``, ``proxies`` and ``HF_HUB_OFFLINE``. The remaining
        ``kwargs`` override the loaded options (as in ``from_dict``).
        """
        from models.common.hub import HubOptions, resolve_file

        hub_names = ("subfolder", "proxies")
        options = HubOptions(
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            **{name: kwargs.pop(name) for name in hub_names if name in kwargs},
        )
        for name in ("return_unused_kwargs", "trust_remote_code", "_from_auto", "_from_pipeline", "use_fast"):
            kwargs.pop(name, None)  # loading switches of transformers with no meaning here
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            file = path
        else:
            try:
                file = resolve_file(path, CONFIG_NAME, options)
            except FileNotFoundError as error:
                raise ValueError(f"pretrained_model_name_or_path: no {CONFIG_NAME} at {path!r}: {error}") from error
        return cls.from_dict(json.loads(pathlib.Path(file).read_text()), **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"
