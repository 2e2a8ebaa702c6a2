"""The factories of the Deformable DETR variants of the paper, one line each over the one table
(``models.ddetr.variant_table.VARIANTS``).

Each factory returns a ``DeformableDetrForObjectDetection`` with random weights (or cached
ImageNet backbone weights when ``use_pretrained_backbone=True``); any config field can be
overridden, e.g. ``deformable_detr_two_stage(num_labels=91, backbone="resnet101")``.

Unlike ``DeformableDetrConfig()``, whose default ``use_pretrained_backbone=True`` mirrors
``transformers``, the factories default to ``use_pretrained_backbone=False`` so that they work
without downloaded weights.
"""

from __future__ import annotations

from typing import Any

from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection
from models.ddetr.variant_table import DENOISING_FIELDS, GROUP_DETR_FIELDS, ONE_STAGE_VARIANTS, hybrid_fields, variant_fields


def build_variant(name: str, **overrides: Any) -> DeformableDetrForObjectDetection:
    """The detector of variant ``name`` with config ``overrides`` (random weights by default)."""
    settings = {"use_pretrained_backbone": False, **variant_fields(name), **overrides}
    return DeformableDetrForObjectDetection(DeformableDetrConfig(**settings))


def deformable_detr(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Deformable DETR: 4 feature levels (strides 8-64), 300 learned queries."""
    return build_variant("deformable_detr", **overrides)


def deformable_detr_single_scale(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Single-scale Deformable DETR: only the stride-32 map (C5)."""
    return build_variant("single_scale", **overrides)


def deformable_detr_single_scale_dc5(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Single-scale Deformable DETR on a dilated C5 (stride 16)."""
    return build_variant("single_scale_dc5", **overrides)


def deformable_detr_box_refine(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Deformable DETR with iterative bounding box refinement."""
    return build_variant("box_refine", **overrides)


def deformable_detr_two_stage(**overrides: Any) -> DeformableDetrForObjectDetection:
    """Two-stage Deformable DETR (with box refinement): encoder proposals seed the decoder."""
    return build_variant("two_stage", **overrides)


def h_deformable_detr(variant: str = "two_stage", **overrides: Any) -> DeformableDetrForObjectDetection:
    """H-Deformable-DETR: a paper variant (default two-stage, with mixed query selection and look
    forward twice) plus the hybrid one-to-many branch in training (1500 queries, k = 6, λ = 1)."""
    return DeformableDetrForObjectDetection(DeformableDetrConfig(**{"use_pretrained_backbone": False, **hybrid_fields(variant), **overrides}))


def dn_deformable_detr(**overrides: Any) -> DeformableDetrForObjectDetection:
    """DN-Deformable-DETR: two-stage Deformable DETR with denoising queries in training (``dn_number`` 100)."""
    return build_variant("two_stage", **{**DENOISING_FIELDS, **overrides})


def group_deformable_detr(variant: str = "deformable_detr", **overrides: Any) -> DeformableDetrForObjectDetection:
    """Group-DETR on a one-stage paper variant: 11 groups of queries in training, one at inference."""
    if variant not in ONE_STAGE_VARIANTS:
        raise ValueError(f"variant must be one of {list(ONE_STAGE_VARIANTS)} (Group-DETR's extra groups are learned queries), got {variant!r}")
    return build_variant(variant, **{**GROUP_DETR_FIELDS, **overrides})
