"""RT-DETR's published sizes, each a line over ``RTDetrConfig`` (any field overridable, e.g.
``rtdetr_r18vd(num_labels=80)``). Random weights; load trained ones with
``RTDetrForObjectDetection.from_pretrained``.
"""

from __future__ import annotations

import copy
from typing import Any

from models.rt_detr.config import RTDetrConfig
from models.rt_detr.modeling import RTDetrForObjectDetection
from models.rt_detr.variant_table import RT_DETR_VARIANTS


def _build(name: str, overrides: dict[str, Any]) -> RTDetrForObjectDetection:
    return RTDetrForObjectDetection(RTDetrConfig(**{**copy.deepcopy(RT_DETR_VARIANTS[name]), **overrides}))


def rtdetr_r18vd(**overrides: Any) -> RTDetrForObjectDetection:
    """RT-DETR R18-vd: basic-block ResNet-18-vd, CCFM expansion 0.5, 3 decoder layers."""
    return _build("r18vd", overrides)


def rtdetr_r34vd(**overrides: Any) -> RTDetrForObjectDetection:
    """RT-DETR R34-vd: basic-block ResNet-34-vd, CCFM expansion 0.5, 4 decoder layers."""
    return _build("r34vd", overrides)


def rtdetr_r50vd(**overrides: Any) -> RTDetrForObjectDetection:
    """RT-DETR R50-vd (the config defaults): bottleneck ResNet-50-vd, 6 decoder layers."""
    return _build("r50vd", overrides)


def rtdetr_r101vd(**overrides: Any) -> RTDetrForObjectDetection:
    """RT-DETR R101-vd: bottleneck ResNet-101-vd, hybrid encoder width 384 (FFN 2048)."""
    return _build("r101vd", overrides)
