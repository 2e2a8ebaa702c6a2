"""Post-processing of detector outputs into scored, labelled boxes in pixels."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import batched_nms

from models.processing.annotations import center_to_corners


def _field(outputs: Any, name: str) -> torch.Tensor:
    value = outputs[name] if isinstance(outputs, dict) else getattr(outputs, name, None)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"outputs.{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _target_scale(
    target_sizes: torch.Tensor | Sequence[Sequence[float]], batch_size: int, device: torch.device
) -> torch.Tensor:
    """``[B, 4]`` (w, h, w, h) scale factors from ``target_sizes`` (``[B, 2]`` as height, width).

    Refuses (``ValueError`` naming ``target_sizes``) any other shape, a length other than ``batch_size``,
    and sizes that are not finite and positive: they would give negative or meaningless boxes.
    """
    if isinstance(target_sizes, torch.Tensor):
        if target_sizes.ndim != 2 or target_sizes.shape[1] != 2:
            raise ValueError(
                f"target_sizes must have shape [batch, 2] (height, width), got {tuple(target_sizes.shape)}"
            )
        if target_sizes.dtype == torch.bool or target_sizes.is_complex():
            raise ValueError(f"target_sizes must hold real numbers, got dtype {target_sizes.dtype}")
        sizes = target_sizes.detach().to("cpu", torch.float64)
    elif isinstance(target_sizes, (list, tuple)):
        if not all(isinstance(pair, (list, tuple, torch.Tensor)) and len(pair) == 2 for pair in target_sizes):
            raise ValueError("target_sizes must be a list of (height, width) pairs")
        try:
            sizes = torch.tensor([[float(pair[0]), float(pair[1])] for pair in target_sizes], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"target_sizes must hold (height, width) numbers: {err}") from err
        sizes = sizes.reshape(-1, 2)
    else:
        raise ValueError(
            f"target_sizes must be a tensor [batch, 2] or a list of pairs, got {type(target_sizes).__name__}"
        )
    if len(sizes) != batch_size:
        raise ValueError(f"target_sizes has {len(sizes)} entries but the outputs have a batch of {batch_size}")
    bad = ~(torch.isfinite(sizes) & (sizes > 0)).all(dim=1)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"target_sizes[{index}] must be a positive (height, width), got {tuple(sizes[index].tolist())}"
        )
    if isinstance(target_sizes, torch.Tensor):
        heights, widths = target_sizes.unbind(1)
    else:
        heights, widths = sizes.to(torch.float32).unbind(1)
    return torch.stack([widths, heights, widths, heights], dim=1).to(device)


def _check_nms_threshold(nms_threshold: float | None) -> None:
    if nms_threshold is None:
        return
    if isinstance(nms_threshold, bool) or not isinstance(nms_threshold, (int, float)):
        raise ValueError(f"nms_threshold must be None or a number in (0, 1], got {nms_threshold!r}")
    if not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"nms_threshold must be None or a number in (0, 1], got {nms_threshold!r}")


def post_process_object_detection(
    outputs: Any,
    threshold: float = 0.5,
    target_sizes: torch.Tensor | Sequence[Sequence[float]] | None = None,
    top_k: int | None = 100,
    nms_threshold: float | None = None,
    use_focal_loss: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Turn ``outputs.logits`` ``[B, Q, C]`` and ``outputs.pred_boxes`` ``[B, Q, 4]`` into detections.

    Scores, by ``use_focal_loss``:

    - ``True`` (sigmoid, the focal-loss heads): the ``min(top_k, Q*C)`` best (query, class) pairs of each
      image, best first; ``top_k=None`` means ``Q`` (RT-DETR's rule).
    - ``False`` (softmax, heads whose last class is "no object"): per query, the best of the softmax over
      the classes without the last one; with ``top_k < Q`` the ``top_k`` best queries, best first,
      otherwise every query in query order.

    Then those with a score above ``threshold`` are kept. Boxes go from normalized ``(cx, cy, w, h)`` to
    ``(x0, y0, x1, y1)``, in pixels of ``target_sizes`` (``[B, 2]`` as height, width) when it is given.
    ``outputs`` may be an object with those attributes or a dict.

    ``nms_threshold`` (off by default, which gives exactly ``transformers``' results): a number in (0, 1]
    turns on class-aware non-maximum suppression of each image's kept detections
    (``torchvision.ops.batched_nms``): a detection is dropped when a better-scored one of the same label
    overlaps it with an IoU above ``nms_threshold``. The survivors keep their order.
    Because suppression is greedy by decreasing score, applying it after the score threshold gives the
    same survivors as applying it before.

    Returns one dict per image: ``scores`` ``[K]``, ``labels`` int64 ``[K]``, ``boxes`` ``[K, 4]``.
    """
    logits = _field(outputs, "logits")
    pred_boxes = _field(outputs, "pred_boxes")
    if logits.ndim != 3:
        raise ValueError(f"outputs.logits must have shape [batch, queries, classes], got {tuple(logits.shape)}")
    if pred_boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"outputs.pred_boxes must have shape {(*logits.shape[:2], 4)} to match the logits, got "
            f"{tuple(pred_boxes.shape)}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise ValueError(f"threshold must be a real number, got {threshold!r}")
    if not isinstance(use_focal_loss, bool):
        raise ValueError(f"use_focal_loss must be a bool, got {use_focal_loss!r}")
    _check_nms_threshold(nms_threshold)
    batch_size = logits.shape[0]

    if use_focal_loss:
        scores, labels, query_index = _sigmoid_top_k(logits, logits.shape[1] if top_k is None else top_k)
    else:
        scores, labels, query_index = _softmax_per_query(logits, top_k)
    corners = center_to_corners(pred_boxes)
    boxes = torch.gather(corners, 1, query_index.unsqueeze(-1).expand(-1, -1, 4))
    if target_sizes is not None:
        boxes = boxes * _target_scale(target_sizes, batch_size, boxes.device)[:, None, :]

    results = []
    for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
        keep = (image_scores > threshold).nonzero().squeeze(1)
        if nms_threshold is not None:
            survivors = batched_nms(image_boxes[keep].float(), image_scores[keep].float(), image_labels[keep], nms_threshold)
            keep = keep[survivors.sort().values]
        results.append({"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]})
    return results


def _sigmoid_top_k(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores, labels, query index)``, each ``[B, K]``: the ``K = min(top_k, Q*C)`` best sigmoid scores."""
    num_classes = logits.shape[2]
    probs = logits.sigmoid().reshape(logits.shape[0], -1)
    scores, flat_index = torch.topk(probs, min(top_k, probs.shape[1]), dim=1)
    return scores, flat_index % num_classes, torch.div(flat_index, num_classes, rounding_mode="floor")


def _softmax_per_query(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores, labels, query index)``: each query's best softmax score over the classes but the last
    ("no object"); all queries in order, or the ``top_k`` best when ``top_k`` is below the number of queries."""
    if logits.shape[2] < 2:
        raise ValueError(
            f"outputs.logits needs at least 2 classes (the last is 'no object') for use_focal_loss=False, got {logits.shape[2]}"
        )
    scores, labels = logits.softmax(dim=-1)[..., :-1].max(dim=-1)
    query_index = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    if top_k is not None and top_k < logits.shape[1]:
        scores, query_index = torch.topk(scores, top_k, dim=1)
        labels = torch.gather(labels, 1, query_index)
    return scores, labels, query_index
