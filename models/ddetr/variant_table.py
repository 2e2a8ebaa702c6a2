"""The Deformable DETR variants of the paper (Table 1): one table, read by the factories
(``models.ddetr.variants``), the command line (``--variant``) and the original-checkpoint conversion
(``models.ddetr.checkpoints`` reads the variant switches of an original run's ``args`` by these names).

It has no model imports, so that every reader can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


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


# The config fields the variants set; the original code's ``args`` hold them under the same names.
VARIANT_SWITCHES = ("num_feature_levels", "dilation", "with_box_refine", "two_stage")


# H-Deformable-DETR (Jia et al., CVPR 2023): the hybrid one-to-many branch of the paper (k = 6,
# λ = 1, 1500 one-to-many queries next to 300 one-to-one), dropout 0 as in its best runs; with box
# refinement it looks forward twice, with two-stage it uses mixed query selection ("mqs", "lft").
HYBRID_FIELDS: Mapping[str, Any] = {"num_queries_one2many": 1500, "k_one2many": 6, "lambda_one2many": 1.0, "dropout": 0.0}


def hybrid_fields(variant: str) -> dict[str, Any]:
    """The config fields of H-Deformable-DETR over the paper variant ``variant``."""
    fields = {**variant_fields(variant), **HYBRID_FIELDS}
    if fields.get("with_box_refine"):
        fields["look_forward_twice"] = True
    if fields.get("two_stage"):
        fields["mixed_selection"] = True
    return fields


# DN-Deformable-DETR: denoising queries on two-stage Deformable DETR (DN-DETR's noise: labels 0.2,
# boxes 0.4); Group-DETR (Chen et al., ICCV 2023): 11 groups in training, as the paper.
DENOISING_FIELDS: Mapping[str, Any] = {"dn_number": 100, "dn_label_noise_ratio": 0.2, "dn_box_noise_scale": 0.4}
GROUP_DETR_FIELDS: Mapping[str, Any] = {"group_detr": 11}
ONE_STAGE_VARIANTS = tuple(name for name, variant in VARIANTS.items() if not variant.fields.get("two_stage"))
