"""Deformable DETR assemblies: config, models, variants, checkpoints, image processors, command line.

Names are imported lazily so that ``import models`` stays cheap and a command that only needs the
image processors does not build the op.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DeformableDetrConfig": "models.ddetr.config",
    "DeformableDetrModel": "models.ddetr.modeling",
    "DeformableDetrForObjectDetection": "models.ddetr.modeling",
    "deformable_detr": "models.ddetr.variants",
    "deformable_detr_single_scale": "models.ddetr.variants",
    "deformable_detr_single_scale_dc5": "models.ddetr.variants",
    "deformable_detr_box_refine": "models.ddetr.variants",
    "deformable_detr_two_stage": "models.ddetr.variants",
    "h_deformable_detr": "models.ddetr.variants",
    "dn_deformable_detr": "models.ddetr.variants",
    "group_deformable_detr": "models.ddetr.variants",
    "register_family": "models.registry",
    "family_names": "models.registry",
    "DeformableDetrImageProcessor": "models.processing.image_processing",
    "DeformableDetrImageProcessorFast": "models.processing.image_processing_fast",
    "DeformableDetrFeatureExtractor": "models.processing.feature_extraction",
    "DinoConfig": "models.dino.config",
    "DinoModel": "models.dino.modeling",
    "DinoForObjectDetection": "models.dino.modeling",
    "dino_4scale": "models.dino.variants",
    "dino_5scale": "models.dino.variants",
    "quantize": "models.quantization.pt2e",
    "RTDetrConfig": "models.rt_detr.config",
    "RTDetrModel": "models.rt_detr.modeling",
    "RTDetrForObjectDetection": "models.rt_detr.modeling",
    "rtdetr_r18vd": "models.rt_detr.variants",
    "rtdetr_r34vd": "models.rt_detr.variants",
    "rtdetr_r50vd": "models.rt_detr.variants",
    "rtdetr_r101vd": "models.rt_detr.variants",
    "RTDetrImageProcessor": "models.processing.rt_detr_image_processing",
    "RTDetrImageProcessorFast": "models.processing.rt_detr_image_processing_fast",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
