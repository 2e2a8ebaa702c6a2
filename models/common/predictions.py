"""What every family does with its decoder's outputs: per-layer class and box predictions, the
prediction dicts the criterion reads, and labels moved to the model's device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from detr_blocks.functional import refine_boxes


def layer_predictions(
    class_heads: Sequence[nn.Module], box_heads: Sequence[nn.Module], hidden: torch.Tensor, initial: torch.Tensor, refined: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits ``[D, B, Q, K]`` and boxes ``[D, B, Q, 4]`` of every decoder layer.

    Args:
        class_heads, box_heads: one head per layer (possibly the same module).
        hidden: ``[B, D, Q, C]`` every layer's output.
        initial: ``[B, Q, 2 or 4]`` the first layer's reference points.
        refined: ``[B, D, Q, 2 or 4]`` every layer's refined references: layer l's box is predicted
            relative to layer l - 1's (``refine_boxes`` with ``eps``).
    """
    references = [initial] + list(refined.unbind(1)[:-1])
    classes, boxes = [], []
    for layer in range(hidden.shape[1]):
        classes.append(class_heads[layer](hidden[:, layer]))
        boxes.append(refine_boxes(box_heads[layer](hidden[:, layer]), references[layer], eps))
    return torch.stack(classes), torch.stack(boxes)


def prediction_dict(classes: torch.Tensor, boxes: torch.Tensor, auxiliary: bool) -> dict[str, Any]:
    """``{"logits", "pred_boxes"}`` of the last layer, plus ``auxiliary_outputs`` (the earlier layers'
    ``{"logits", "pred_boxes"}``) when ``auxiliary``; ``classes`` ``[D, B, Q, K]``, ``boxes`` ``[D, B, Q, 4]``."""
    predictions: dict[str, Any] = {"logits": classes[-1], "pred_boxes": boxes[-1]}
    if auxiliary:
        predictions["auxiliary_outputs"] = [{"logits": c, "pred_boxes": b} for c, b in zip(classes[:-1], boxes[:-1])]
    return predictions


def targets_on(labels: Any, batch: int, device: torch.device) -> list[dict[str, Any]]:
    """``labels`` (one dict per image) with their tensors on ``device``; ``ValueError`` naming
    ``labels`` unless it is a list of ``batch`` dicts."""
    if not isinstance(labels, (list, tuple)) or len(labels) != batch:
        raise ValueError(f"labels must be a list of {batch} dicts (one per image), got {type(labels).__name__}")
    return [{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in target.items()} for target in labels]
