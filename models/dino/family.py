"""DINO's registry entry (``models.common.family.Family``)."""

from __future__ import annotations

from models.common.family import Family
from models.dino.config import DinoConfig
from models.dino.modeling import DinoForObjectDetection
from models.dino.variant_table import DINO_VARIANTS

# DINO's 12-epoch schedule: AdamW lr 1e-4 (backbone 1e-5), decay at epoch 11 (config/DINO/DINO_4scale.py)
DINO = Family(
    "dino", DinoConfig, DinoForObjectDetection, "DINO (Zhang et al., 2023): denoising, mixed query selection, look forward twice",
    variants={name: dict(fields) for name, fields in DINO_VARIANTS.items()},
    recipe={"epochs": 12, "lr_drop": 11, "lr": 1e-4, "lr_backbone": 1e-5},
)
FAMILIES = (DINO,)
