"""Box conversions and overlap measures.

Formats: ``cxcywh`` is (centre x, centre y, width, height); ``xyxy`` is (x0, y0, x1, y1) corners.
Both work in any units as long as the two arguments of a function share them.
"""

from __future__ import annotations

import torch


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")


def _check_corners(name: str, boxes: torch.Tensor) -> None:
    # x1 < x0 or y1 < y0 (or NaN) gives a negative area and a meaningless (G)IoU; fail early
    # instead of returning numbers that silently corrupt a matching or a loss.
    bad = ~(boxes[..., 2:] >= boxes[..., :2]).all(-1)
    if bad.any():
        raise ValueError(
            f"{name} must be (x0, y0, x1, y1) corner boxes with x1 >= x0 and y1 >= y0 and no NaN; "
            f"{int(bad.sum())} of {bad.numel()} boxes are degenerate, e.g. {boxes[bad][0].tolist()}"
        )


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (cx, cy, w, h) → ``[..., 4]`` (x0, y0, x1, y1)."""
    _check_boxes("boxes", boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) → ``[..., 4]`` (cx, cy, w, h)."""
    _check_boxes("boxes", boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[..., 4]`` xyxy boxes → ``[...]``."""
    _check_boxes("boxes", boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou_and_union(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    if aligned:
        top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
        bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
        union_base = area1 + area2
    else:
        top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
        bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
        union_base = area1[:, None] + area2[None, :]
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    union = union_base - intersection
    return intersection / union, union


def _check_pair(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool) -> None:
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    if aligned:
        if boxes1.shape != boxes2.shape:
            raise ValueError(f"aligned=True needs boxes1 and boxes2 of one shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    elif boxes1.dim() != 2 or boxes2.dim() != 2:
        raise ValueError(f"boxes1 and boxes2 must be [N, 4] and [M, 4], got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """IoU of xyxy boxes.

    Args:
        boxes1: ``[N, 4]`` (or ``[..., 4]`` when ``aligned``).
        boxes2: ``[M, 4]`` (or the shape of ``boxes1`` when ``aligned``).
        aligned: compare ``boxes1[i]`` with ``boxes2[i]`` only, instead of all pairs.

    Returns:
        ``[N, M]`` pairwise IoU, or ``[...]`` when ``aligned``.
    """
    _check_pair(boxes1, boxes2, aligned)
    return _iou_and_union(boxes1, boxes2, aligned)[0]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of xyxy boxes: IoU − (hull − union) / hull.

    Args:
        boxes1: ``[N, 4]`` (or ``[..., 4]`` when ``aligned``), with x1 >= x0 and y1 >= y0.
        boxes2: ``[M, 4]`` (or the shape of ``boxes1`` when ``aligned``), likewise.
        aligned: compare ``boxes1[i]`` with ``boxes2[i]`` only, instead of all pairs.

    Returns:
        ``[N, M]`` pairwise GIoU in [-1, 1], or ``[...]`` when ``aligned``.

    Raises:
        ValueError: if a box is degenerate (x1 < x0, y1 < y0 or NaN), naming the argument.
    """
    _check_pair(boxes1, boxes2, aligned)
    _check_corners("boxes1", boxes1)
    _check_corners("boxes2", boxes2)
    iou, union = _iou_and_union(boxes1, boxes2, aligned)
    if aligned:
        top_left = torch.min(boxes1[..., :2], boxes2[..., :2])
        bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    else:
        top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
        bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    hull = size[..., 0] * size[..., 1]
    return iou - (hull - union) / hull
