"""RT-DETR's registry entry (``models.common.family.Family``)."""

from __future__ import annotations

import copy

from models.common.family import Family, ImageRecipe
from models.rt_detr.config import RTDetrConfig
from models.rt_detr.modeling import RTDetrForObjectDetection
from models.rt_detr.variant_table import RT_DETR_VARIANTS

# The authors' schedule (rtdetr_r50vd_6x_coco): AdamW lr 1e-4, backbone lr 1e-5, weight decay 1e-4, gradient
# clipping at 0.1, 72 epochs, no step decay and no lower rate for the sampling offsets, 640x640 images;
# images as RTDetrImageProcessor prepares them: a fixed square resize, [0, 1] pixels; the authors' training
# augmentation (photometric distortion, zoom out, IoU crop, flip).
RT_DETR = Family(
    "rt-detr", RTDetrConfig, RTDetrForObjectDetection,
    "RT-DETR (Zhao et al., 2024): ResNet-vd, hybrid encoder (AIFI + CCFM), grid-anchor query selection, varifocal loss",
    variants={name: copy.deepcopy(fields) for name, fields in RT_DETR_VARIANTS.items()},
    recipe={"epochs": 72, "lr_drop": 0, "lr": 1e-4, "lr_backbone": 1e-5, "lr_linear_proj_mult": 1.0, "weight_decay": 1e-4,
            "clip_max_norm": 0.1, "image_size": 640, "multiscale": False},
    images=ImageRecipe("models.processing.rt_detr_image_processing:RTDetrImageProcessor", "square", normalize=False,
                       augment="rt_detr"),
)
FAMILIES = (RT_DETR,)
