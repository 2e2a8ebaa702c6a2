"""``HungarianMatcher``: the one-to-one assignment of predictions to ground-truth objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from detr_blocks._targets import check_predictions, check_targets
from detr_blocks.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class NonFinitePredictions(ValueError, FloatingPointError):
    """The predictions to match hold NaN or inf: no matching exists, the model has diverged. A
    ``FloatingPointError`` (what a training loop's divergence check catches) and, as before, a
    ``ValueError``."""


class HungarianMatcher(nn.Module):
    """Assign each target to one query, minimizing per image

    ``class_cost · focal(p_q, label_t) + bbox_cost · ‖b_q − b_t‖₁ + giou_cost · (−GIoU(b_q, b_t))``

    where the focal class cost is ``α (1−p)^γ (−log(p+1e-8)) − (1−α) p^γ (−log(1−p+1e-8))`` with p
    the sigmoid probability of the target's class (the paper's cost). Solved with
    ``scipy.optimize.linear_sum_assignment``; with more targets than queries only ``Q`` targets
    are matched.

    Args:
        class_cost, bbox_cost, giou_cost: weights (not all zero). Paper: 2, 5, 2; Hugging Face's
            config defaults: 1, 5, 2.
        focal_alpha, focal_gamma: of the class cost.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        for name, value in (("class_cost", class_cost), ("bbox_cost", bbox_cost), ("giou_cost", giou_cost)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("class_cost, bbox_cost and giou_cost are all 0: the matching would be arbitrary")
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {focal_alpha}")
        self.class_cost = float(class_cost)
        self.bbox_cost = float(bbox_cost)
        self.giou_cost = float(giou_cost)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    def cost_matrix(self, logits: torch.Tensor, pred_boxes: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            logits: ``[Q, K]``; pred_boxes: ``[Q, 4]`` (cx, cy, w, h).
            labels: int64 ``[N]``; boxes: ``[N, 4]`` (cx, cy, w, h).

        Returns:
            ``[Q, N]``.

        Raises:
            NonFinitePredictions: (a ``ValueError`` and a ``FloatingPointError``) if the
                predictions hold NaN or inf: the model has diverged.
            ValueError: if the cost holds NaN or inf for another reason (degenerate target boxes).
        """
        if not torch.isfinite(pred_boxes).all():
            raise NonFinitePredictions(
                f"pred_boxes hold {int((~torch.isfinite(pred_boxes)).sum())} NaN/inf values, so the matching cost is undefined; "
                "the model has most likely diverged (lower the learning rate, clip gradients, check fp16 overflow)"
            )
        if torch.isnan(logits).any():
            raise NonFinitePredictions(
                f"logits hold {int(torch.isnan(logits).sum())} NaN values, so the matching cost is undefined; "
                "the model has most likely diverged (lower the learning rate, clip gradients, check fp16 overflow)"
            )
        # at least fp32: half-precision costs (under autocast) would make near-ties arbitrary
        dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        logits, pred_boxes, boxes = logits.to(dtype), pred_boxes.to(dtype), boxes.to(dtype)
        prob = logits.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        class_cost = positive[:, labels] - negative[:, labels]
        bbox_cost = torch.cdist(pred_boxes, boxes, p=1)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(boxes))
        cost = self.bbox_cost * bbox_cost + self.class_cost * class_cost + self.giou_cost * giou_cost
        if not torch.isfinite(cost).all():
            parts = [name for name, part in (("class", class_cost), ("L1 box", bbox_cost), ("GIoU", giou_cost)) if not torch.isfinite(part).all()]
            raise ValueError(
                f"the matching cost holds {int((~torch.isfinite(cost)).sum())} NaN/inf entries (from the {', '.join(parts) or 'weighted sum of the'} cost); "
                "check the predictions and target boxes (zero-size boxes on both sides give GIoU 0/0)"
            )
        return cost

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Args:
            outputs: ``{"logits": [B, Q, K], "pred_boxes": [B, Q, 4]}`` (normalized cx, cy, w, h).
            targets: B dicts with ``"class_labels"`` int64 ``[N_i]`` and ``"boxes"`` ``[N_i, 4]``.

        Returns:
            B pairs ``(query_indices, target_indices)``, int64 CPU tensors of length
            ``min(Q, N_i)``, sorted by query index.
        """
        logits, pred_boxes = check_predictions("outputs", outputs)
        check_targets(targets, logits.shape[0], logits.shape[-1])
        matches = []
        for index, target in enumerate(targets):
            labels, boxes = target["class_labels"], target["boxes"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            try:
                cost = self.cost_matrix(logits[index], pred_boxes[index], labels.to(logits.device), boxes.to(logits.device))
            except ValueError as error:  # keeps the kind (NonFinitePredictions: the model diverged)
                raise type(error)(f"image {index} of the batch: {error}") from None
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches
