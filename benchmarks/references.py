"""Reference models the benchmarks compare against."""

from __future__ import annotations

from typing import Any

import torch


def transformers_r50_detector() -> Any:
    """``transformers``' ResNet-50 Deformable DETR (91 classes, no downloaded weights), seeded, every
    weight perturbed by N(0, 0.01) so that none is zero (``transformers`` zero-initialises some heads)."""
    import transformers

    torch.manual_seed(0)
    reference = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(use_pretrained_backbone=False, num_labels=91)).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return reference
