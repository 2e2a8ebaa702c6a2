"""The Deformable DETR variants of the paper (Table 1), one line each over the shared config.

Each factory returns a ``DeformableDetrForObjectDetection`` with random weights (or cached
ImageNet backbone weights when ``use_pretrained_backbone=True``); any config field can be
overridden, e.g. ``deformable_detr_two_stage(num_labels=91, backbone="resnet101")``.

Unlike ``DeformableDetrConfig()``, whose default ``use_pretrained_backbone=True`` mirrors
``transformers``, the factories default to ``use_pretrained_backbone=False`` so that they work
without downloaded weights.
"""

from __future__ import annotations

from typing import Any

from models.config import DeformableDetrConfig
from models.modeling import DeformableDetrForObjectDetection


def _build(overrides: dict[str, Any], **variant: Any) -> DeformableDetrForObjectDetection:
    settings = {"use_pretrained_backbone": False, **variant, **overrides}
    return DeformableDetrForObjectDetection(DeformableDetrConfig(**settings))


def deformable_detr(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Deformable DETR: 4 feature levels (strides 8-64), 300 learned queries."""
    return _build(overrides)


def deformable_detr_single_scale(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Single-scale Deformable DETR: only the stride-32 map (C5)."""
    return _build(overrides, num_feature_levels=1)


def deformable_detr_single_scale_dc5(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Single-scale Deformable DETR on a dilated C5 (stride 16)."""
    return _build(overrides, num_feature_levels=1, dilation=True)


def deformable_detr_box_refine(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Deformable DETR with iterative bounding box refinement."""
    return _build(overrides, with_box_refine=True)


def deformable_detr_two_stage(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Two-stage Deformable DETR (with box refinement): encoder proposals seed the decoder."""
    return _build(overrides, with_box_refine=True, two_stage=True)
