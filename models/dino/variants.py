"""DINO's two published configurations, each a line over ``DinoConfig`` (any field overridable).

``dino_4scale``: ResNet stages 2-4 plus one strided level (the config defaults).
``dino_5scale``: ResNet stages 1-4 plus one strided level (stride 4 to 64).
Random weights; ``use_pretrained_backbone=True`` loads cached ImageNet weights (never downloads).
"""

from __future__ import annotations

from typing import Any

from models.dino.config import DinoConfig
from models.dino.modeling import DinoForObjectDetection
from models.dino.variant_table import DINO_VARIANTS


def dino_4scale(**overrides: Any) -> DinoForObjectDetection:
    """DINO-4scale: 4 feature levels (strides 8-64), 900 queries."""
    return DinoForObjectDetection(DinoConfig(**{**DINO_VARIANTS["4scale"], **overrides}))


def dino_5scale(**overrides: Any) -> DinoForObjectDetection:
    """DINO-5scale: 5 feature levels (strides 4-64), 900 queries."""
    return DinoForObjectDetection(DinoConfig(**{**DINO_VARIANTS["5scale"], **overrides}))
