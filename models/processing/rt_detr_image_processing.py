"""``RTDetrImageProcessor``: the RT-DETR image processor (PIL resizing, numpy arithmetic).

RT-DETR runs the Deformable DETR pipeline (``DeformableDetrImageProcessor``) with other defaults and another
post-processing; the numbers follow the Hugging Face ``RTDetrImageProcessor`` (transformers 4.57):

- resize to a fixed ``640 x 640`` (aspect ratio not kept), rescale by 1/255, no normalization (ImageNet mean
  and std when ``do_normalize=True``), no padding (so no ``pixel_mask`` unless ``do_pad=True``);
- COCO detection annotations only, boxes converted to relative ``(cx, cy, w, h)`` ``labels``; no
  segmentation masks (``transformers``' RT-DETR processors never return them);
- an int ``size`` means a square ``{"height": size, "width": size}``;
- ``post_process_object_detection(outputs, threshold, target_sizes, use_focal_loss=True)``: sigmoid scores
  and the ``Q`` best of all ``Q x C`` (query, class) pairs, or with ``use_focal_loss=False`` each query's
  best softmax class but the last ("no object").

``RTDetrDefaults`` holds all of that; each RT-DETR processor puts it in front of the Deformable DETR processor
of the same speed (``class RTDetrImageProcessor(RTDetrDefaults, DeformableDetrImageProcessor)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from models.processing.image_processing import DeformableDetrImageProcessor
from models.processing.options import ResolvedOptions
from models.processing.postprocess import post_process_object_detection as _post_process_object_detection

_FORMAT = "coco_detection"
# Where RT-DETR's constructor defaults differ from Deformable DETR's (the other options keep theirs).
RT_DETR_DEFAULTS = MappingProxyType(
    {"format": _FORMAT, "size": {"height": 640, "width": 640}, "do_normalize": False, "do_convert_annotations": True, "do_pad": False}
)


def _square(size: Any) -> Any:
    """An int ``size`` read as a square ``{"height", "width"}``; any other value unchanged."""
    if isinstance(size, int) and not isinstance(size, bool):
        return {"height": size, "width": size}
    return size


def _check_rt_detr_format(format: Any) -> None:
    if getattr(format, "value", format) != _FORMAT:
        raise ValueError(f"format must be {_FORMAT!r} (the only annotation format of RT-DETR), got {format!r}")


class RTDetrDefaults:
    """RT-DETR's constructor defaults, option rules and post-processing, in front of a Deformable DETR processor.

    Keyword arguments only (as ``transformers``' fast processor), those of the Deformable DETR processors with
    ``RT_DETR_DEFAULTS`` where the two differ; all can be overridden per call in ``preprocess``:
        format: ``"coco_detection"`` (the only format RT-DETR takes).
        do_resize / size / resample: resize to ``size`` (default ``{"height": 640, "width": 640}``; also
            ``{"shortest_edge", "longest_edge"}``, ``{"max_height", "max_width"}``, an int for a square).
        do_rescale / rescale_factor: multiply pixel values (default 1/255).
        do_normalize / image_mean / image_std: ``(x - mean) / std`` per channel (off by default; ImageNet).
        do_convert_annotations: boxes to relative ``(cx, cy, w, h)`` (default True; None: as ``do_normalize``).
        do_pad / pad_size: pad bottom/right to the batch maximum or ``pad_size`` and return ``pixel_mask``
            (off by default).
    """

    def __init__(self, **kwargs: Any) -> None:
        options = {**RT_DETR_DEFAULTS, **kwargs}
        if options["size"] is None:
            options["size"] = RT_DETR_DEFAULTS["size"]
        _check_rt_detr_format(options["format"])
        options["size"] = _square(options["size"])
        super().__init__(**options)

    def resolve(self, overrides: dict[str, Any]) -> ResolvedOptions:
        """The Deformable DETR resolution with an int ``size`` read as a square and the format checked."""
        overrides["size"] = _square(overrides.get("size"))
        options = super().resolve(overrides)
        _check_rt_detr_format(options.format)
        return options

    def preprocess(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_segmentation_masks: bool | None = None,
        masks_path: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Prepare ``images`` (and their COCO detection ``annotations``) for RT-DETR.

        Returns a ``BatchFeature`` with ``pixel_values`` ``[B, 3, H, W]`` (a list of arrays from the slow
        processor with ``return_tensors=None``), ``pixel_mask`` only with ``do_pad=True``, and with
        annotations ``labels``: one dict per image (``boxes`` relative ``(cx, cy, w, h)``, ``class_labels``,
        ``area``, ``iscrowd``, ``image_id``, ``orig_size``, ``size``). ``return_segmentation_masks=True`` is
        ignored with a warning: RT-DETR targets have no masks (as in ``transformers``).
        """
        if return_segmentation_masks or getattr(self, "return_segmentation_masks", None):
            warnings.warn(
                f"{type(self).__name__} ignores return_segmentation_masks=True: RT-DETR labels have no masks",
                UserWarning,
                stacklevel=2,
            )
        return super().preprocess(images, annotations, False, masks_path, **kwargs)

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[float]] | None = None,
        use_focal_loss: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image from ``outputs.logits`` ``[B, Q, C]`` / ``outputs.pred_boxes`` ``[B, Q, 4]``.

        ``use_focal_loss=True``: sigmoid scores, the ``Q`` best (query, class) pairs, best first.
        ``use_focal_loss=False``: per query, the best softmax score over the classes but the last, in query
        order. (``transformers`` 4.57 takes that softmax over the batch axis, an implicit-``dim`` slip; here it
        is over the classes.) Scores above ``threshold`` are kept; boxes are ``(x0, y0, x1, y1)``, in pixels
        of ``target_sizes`` (``[B, 2]`` as height, width) when given. Returns a list of
        ``{"scores", "labels", "boxes"}``.
        """
        return _post_process_object_detection(
            outputs, threshold=threshold, target_sizes=target_sizes, top_k=None, use_focal_loss=use_focal_loss
        )


class RTDetrImageProcessor(RTDetrDefaults, DeformableDetrImageProcessor):
    """Slow RT-DETR image processor for PIL images and numpy arrays (also accepts CPU tensors).

    The options of ``RTDetrDefaults``; the single steps (``resize``, ``rescale``, ``normalize``, ``pad``) are
    those of ``DeformableDetrImageProcessor``.
    """
