"""The Deformable DETR variants of the paper (Table 1): one table, read by the factories below, the
command line (``--variant``) and the original-checkpoint conversion.

Each factory returns a ``DeformableDetrForObjectDetection`` with random weights (or cached
ImageNet backbone weights when ``use_pretrained_backbone=True``); any config field can be
overridden, e.g. ``deformable_detr_two_stage(num_labels=91, backbone="resnet101")``.

Unlike ``DeformableDetrConfig()``, whose default ``use_pretrained_backbone=True`` mirrors
``transformers``, the factories default to ``use_pretrained_backbone=False`` so that they work
without downloaded weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection


class Variant(NamedTuple):
    """A paper variant: its command-line name, factory name, config fields and one-line description."""

    name: str
    factory: str
    fields: Mapping[str, Any]
    description: str


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("deformable_detr", "deformable_detr", {}, "Deformable DETR: 4 feature levels (strides 8-64), 300 learned queries."),
        Variant("single_scale", "deformable_detr_single_scale", {"num_feature_levels": 1}, "Single-scale Deformable DETR: only the stride-32 map (C5)."),
        Variant(
            "single_scale_dc5",
            "deformable_detr_single_scale_dc5",
            {"num_feature_levels": 1, "dilation": True},
            "Single-scale Deformable DETR on a dilated C5 (stride 16).",
        ),
        Variant("box_refine", "deformable_detr_box_refine", {"with_box_refine": True}, "Deformable DETR with iterative bounding box refinement."),
        Variant(
            "two_stage",
            "deformable_detr_two_stage",
            {"with_box_refine": True, "two_stage": True},
            "Two-stage Deformable DETR (with box refinement): encoder proposals seed the decoder.",
        ),
    )
}

def variant_fields(name: str) -> dict[str, Any]:
    """The config fields of the variant ``name`` (a key of ``VARIANTS``)."""
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {name!r}")
    return dict(VARIANTS[name].fields)


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
