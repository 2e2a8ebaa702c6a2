"""Private: validation of the prediction and target containers used by the matcher and losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def check_predictions(name: str, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits [B, Q, K], pred_boxes [B, Q, 4])`` from ``outputs``, checking their shapes."""
    if not isinstance(outputs, Mapping) or "logits" not in outputs or "pred_boxes" not in outputs:
        raise ValueError(f"{name} must be a mapping with 'logits' [B, Q, K] and 'pred_boxes' [B, Q, 4], got {type(outputs).__name__} with keys {list(outputs) if isinstance(outputs, Mapping) else '-'}")
    logits, boxes = outputs["logits"], outputs["pred_boxes"]
    if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"{name}['logits'] must be [B, Q, K] and {name}['pred_boxes'] [B, Q, 4] with the same B, Q; got {tuple(logits.shape)} and {tuple(boxes.shape)}")
    return logits, boxes


def check_targets(targets: Sequence[Mapping[str, torch.Tensor]], batch: int, num_classes: int) -> None:
    """Each target: ``class_labels`` int64 ``[N]`` in [0, num_classes), ``boxes`` ``[N, 4]``
    finite (cx, cy, w, h) with w, h >= 0."""
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence) or len(targets) != batch:
        raise ValueError(f"targets must be a list of {batch} dicts (one per image), got {type(targets).__name__} of length {len(targets) if hasattr(targets, '__len__') else '-'}")
    for index, target in enumerate(targets):
        if not isinstance(target, Mapping) or "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"targets[{index}] must be a dict with 'class_labels' and 'boxes'")
        labels, boxes = target["class_labels"], target["boxes"]
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"targets[{index}]['class_labels'] must be an int64 [N] tensor, got {labels.dtype} {tuple(labels.shape)}")
        if boxes.shape != (labels.shape[0], 4):
            raise ValueError(f"targets[{index}]['boxes'] must have shape [N={labels.shape[0]}, 4], got {tuple(boxes.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"targets[{index}]['class_labels'] must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]")
        if boxes.numel() and (not torch.isfinite(boxes).all() or (boxes[:, 2:] < 0).any()):
            raise ValueError(f"targets[{index}]['boxes'] must be finite (cx, cy, w, h) boxes with w, h >= 0")
