"""Varifocal loss (Zhang et al., VarifocalNet, 2021), RT-DETR's classification loss with an
IoU-aware target.

Elementwise, for logit x, target score q (the IoU with the matched box at the matched class, 0
elsewhere) and positive mask t (1 at the matched class of a matched query)::

    weight = α · σ(x)^γ · (1 − t) + q            (σ(x) detached: the weight carries no gradient)
    loss   = weight · BCE(x, q)

so negatives are down-weighted like a focal loss and positives weighted by their own IoU.
``VarifocalLoss`` is that loss as a ``SetCriterion`` extra loss: the term ``loss_vfl``, summed over
all queries and classes and divided by the number of target boxes (RT-DETR's ``loss_labels_vfl``);
the IoU is of the detached predicted box, so it steers the class head only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from detr_blocks.box_ops import box_cxcywh_to_xyxy, box_iou


def varifocal_loss(logits: torch.Tensor, scores: torch.Tensor, positives: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise varifocal loss (formula in the module docstring).

    Args:
        logits: any shape, e.g. ``[B, Q, K]``.
        scores: the IoU-aware targets q in [0, 1], the shape of ``logits``.
        positives: t, 1 (or True) where the target is positive, else 0; the shape of ``logits``.
        alpha: weight of the negatives (RT-DETR: ``focal_loss_alpha`` 0.75).
        gamma: focusing exponent (RT-DETR: ``focal_loss_gamma`` 2.0).

    Returns:
        The loss, the shape of ``logits`` (unreduced).
    """
    for name, tensor in (("scores", scores), ("positives", positives)):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != logits.shape:
            raise ValueError(f"{name} must have the shape of logits {tuple(logits.shape)}, got {tuple(getattr(tensor, 'shape', ()))}")
    if not isinstance(alpha, (int, float)) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"alpha must be a number and gamma a non-negative number, got {alpha!r} and {gamma!r}")
    scores = scores.to(logits.dtype)
    weight = alpha * logits.detach().sigmoid().pow(gamma) * (1 - positives.to(logits.dtype)) + scores
    return F.binary_cross_entropy_with_logits(logits, scores, weight=weight, reduction="none")


class VarifocalLoss:
    """The ``loss_vfl`` term for ``SetCriterion(..., losses=("vfl", "boxes"), extra_losses={"vfl":
    VarifocalLoss()}, weight_dict={"loss_vfl": 1, ...})``.

    Called as ``loss(outputs, targets, indices, num_boxes)`` with ``outputs`` holding ``logits``
    ``[B, Q, K]`` and ``pred_boxes`` ``[B, Q, 4]`` (cx, cy, w, h), ``targets`` B dicts with
    ``class_labels`` ``[N_i]`` and ``boxes`` ``[N_i, 4]``, ``indices`` B pairs (query indices,
    target indices); returns ``{"loss_vfl": scalar}`` = Σ varifocal_loss / num_boxes.

    Args:
        alpha, gamma: of ``varifocal_loss`` (RT-DETR: 0.75, 2.0).
    """

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0) -> None:
        if not isinstance(alpha, (int, float)) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"alpha must be a number and gamma a non-negative number, got {alpha!r} and {gamma!r}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return f"VarifocalLoss(alpha={self.alpha}, gamma={self.gamma})"

    def __call__(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        logits, pred_boxes = outputs["logits"], outputs["pred_boxes"]
        if logits.dim() != 3 or pred_boxes.shape != (*logits.shape[:2], 4):
            raise ValueError(f"outputs must hold logits [B, Q, K] and pred_boxes [B, Q, 4], got {tuple(logits.shape)} and {tuple(pred_boxes.shape)}")
        if len(indices) != logits.shape[0] or len(targets) != logits.shape[0]:
            raise ValueError(f"targets and indices must have one entry per image ({logits.shape[0]}), got {len(targets)} and {len(indices)}")
        device = logits.device
        batch_index = torch.cat([torch.full_like(torch.as_tensor(rows), i) for i, (rows, _) in enumerate(indices)]).to(device)
        query_index = torch.cat([torch.as_tensor(rows) for rows, _ in indices]).to(device)
        labels = torch.cat([t["class_labels"][columns] for t, (_, columns) in zip(targets, indices)]).to(device)
        target_boxes = torch.cat([t["boxes"][columns] for t, (_, columns) in zip(targets, indices)]).to(pred_boxes)
        source_boxes = pred_boxes[batch_index, query_index].detach()
        iou = box_iou(box_cxcywh_to_xyxy(source_boxes), box_cxcywh_to_xyxy(target_boxes), aligned=True)
        positives = torch.zeros_like(logits)
        positives[batch_index, query_index, labels] = 1.0
        scores = torch.zeros_like(logits)
        scores[batch_index, query_index, labels] = iou.to(logits.dtype)
        loss = varifocal_loss(logits, scores, positives, self.alpha, self.gamma)
        return {"loss_vfl": loss.sum() / num_boxes}
