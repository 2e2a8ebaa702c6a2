"""The registry entries (``models.common.family.Family``) of Deformable DETR and the variants built
on it: one detector class, four sets of defaults."""

from __future__ import annotations

from models.common.family import Family
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection
from models.ddetr.variant_table import DENOISING_FIELDS, GROUP_DETR_FIELDS, ONE_STAGE_VARIANTS, VARIANTS, hybrid_fields

_PAPER = {name: dict(variant.fields) for name, variant in VARIANTS.items()}

DEFORMABLE_DETR = Family(
    "deformable-detr", DeformableDetrConfig, DeformableDetrForObjectDetection,
    "Deformable DETR (Zhu et al., 2021); --variant picks one of the paper's five", variants=_PAPER,
)
H_DEFORMABLE_DETR = Family(
    "h-deformable-detr", DeformableDetrConfig, DeformableDetrForObjectDetection,
    "Deformable DETR + hybrid one-to-many matching in training (H-DETR, Jia et al., 2023)",
    defaults=hybrid_fields("two_stage"),
    variants={name: {**hybrid_fields(name)} for name in VARIANTS},
)
DN_DEFORMABLE_DETR = Family(
    "dn-deformable-detr", DeformableDetrConfig, DeformableDetrForObjectDetection,
    "two-stage Deformable DETR + denoising queries in training (DN-DETR's idea, DINO's contrastive queries)",
    defaults={**_PAPER["two_stage"], **DENOISING_FIELDS}, variants={"two_stage": {}},
)
GROUP_DETR = Family(
    "group-detr", DeformableDetrConfig, DeformableDetrForObjectDetection,
    "Deformable DETR + 11 one-to-one query groups in training (Group-DETR, Chen et al., 2023)",
    defaults={**GROUP_DETR_FIELDS, "two_stage": False}, variants={name: {**_PAPER[name], **GROUP_DETR_FIELDS} for name in ONE_STAGE_VARIANTS},
)
FAMILIES = (DEFORMABLE_DETR, H_DEFORMABLE_DETR, DN_DEFORMABLE_DETR, GROUP_DETR)
