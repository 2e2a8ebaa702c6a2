"""Set-prediction losses of Deformable DETR: ``sigmoid_focal_loss`` and ``SetCriterion``."""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detr_blocks._targets import check_predictions, check_targets
from detr_blocks.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_blocks.matcher import HungarianMatcher

DEFAULT_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
_SUFFIX = re.compile(r"_(\d+|enc)$")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Elementwise focal loss (Lin et al., 2017) on independent sigmoid outputs.

    ``α_t · (1 − p_t)^γ · BCE(logits, targets)`` with ``p_t = p·t + (1−p)(1−t)`` and
    ``α_t = α·t + (1−α)(1−t)`` (no α weighting when ``alpha < 0``).

    Args:
        logits: any shape; targets: the same shape, in [0, 1].

    Returns:
        The loss, same shape (unreduced).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits and targets must have the same shape, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    prob = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def average_num_boxes(targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> float:
    """Number of target boxes per process, averaged over processes when ``torch.distributed`` is
    initialized (so every process normalizes by the same number), and at least 1."""
    count = torch.tensor([float(sum(len(t["class_labels"]) for t in targets))], device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return torch.clamp(count / world_size, min=1).item()


class SetCriterion(nn.Module):
    """Deformable DETR's training loss: match, then supervise the matched predictions.

    For the final outputs, every entry of ``outputs["auxiliary_outputs"]`` (suffix ``_i``) and
    ``outputs["enc_outputs"]`` (two-stage proposals, suffix ``_enc``), each matched separately:

    - ``loss_ce``: sigmoid focal loss over all queries and classes against one-hot targets (no
      "no-object" class: unmatched queries are all zeros), summed and divided by the number of
      target boxes (``average_num_boxes``), as the paper's code;
    - ``loss_bbox``: L1 between matched (cx, cy, w, h) boxes / number of boxes;
    - ``loss_giou``: 1 − GIoU of matched boxes / number of boxes;
    - ``cardinality_error`` (logged, no gradient): |#queries whose argmax is not the last class −
      #targets|, averaged over images (the paper's definition, kept for comparable logs);
    - ``class_error`` (final outputs only, logged): 100 − top-1 accuracy of matched queries.

    The two-stage encoder loss is class-agnostic: every target gets class 0, as in the paper's code.
    (Hugging Face's ``DeformableDetrForObjectDetection`` does not compute this term.)

    Args:
        num_classes: K, the logits' last dimension.
        matcher: a ``HungarianMatcher`` (or any module with its call signature).
        weight_dict: weights of the total; keys are base names (``loss_ce``, ``loss_bbox``,
            ``loss_giou``) that also weight the suffixed terms, or full names that override.
            Default: the paper's ``{loss_ce: 2, loss_bbox: 5, loss_giou: 2}`` (Hugging Face uses
            ``loss_ce: 1``). Terms without a weight are returned but not added.
        losses: which of ``"labels"``, ``"boxes"``, ``"cardinality"`` to compute.
        focal_alpha, focal_gamma: of the focal loss.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        weight_dict: Mapping[str, float] | None = None,
        losses: Iterable[str] = ("labels", "boxes", "cardinality"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.losses = tuple(losses)
        unknown = set(self.losses) - {"labels", "boxes", "cardinality"}
        if unknown:
            raise ValueError(f"losses must be among 'labels', 'boxes', 'cardinality', got unknown {sorted(unknown)}")
        self.num_classes = num_classes
        self.matcher = HungarianMatcher(focal_alpha=focal_alpha, focal_gamma=focal_gamma) if matcher is None else matcher
        self.weight_dict = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def loss_labels(self, logits: torch.Tensor, targets, matches, num_boxes: float, log: bool) -> dict[str, torch.Tensor]:
        batch_index, query_index = _matched_queries(matches, logits.device)
        labels = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, matches)]).to(logits.device)
        onehot = torch.zeros_like(logits)
        onehot[batch_index, query_index, labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum() / num_boxes
        result = {"loss_ce": loss}
        if log:
            with torch.no_grad():
                if labels.numel():
                    correct = (logits[batch_index, query_index].argmax(-1) == labels).float().mean()
                else:
                    correct = logits.new_zeros(())
                result["class_error"] = 100.0 - 100.0 * correct
        return result

    def loss_boxes(self, pred_boxes: torch.Tensor, targets, matches, num_boxes: float) -> dict[str, torch.Tensor]:
        batch_index, query_index = _matched_queries(matches, pred_boxes.device)
        source = pred_boxes[batch_index, query_index]
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches)]).to(source)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(source), box_cxcywh_to_xyxy(target), aligned=True)
        return {
            "loss_bbox": F.l1_loss(source, target, reduction="none").sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
        }

    @torch.no_grad()
    def loss_cardinality(self, logits: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        counts = torch.tensor([float(len(t["class_labels"])) for t in targets], device=logits.device)
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        return {"cardinality_error": F.l1_loss(predicted, counts)}

    def _losses_of(self, outputs, targets, num_boxes: float, log: bool) -> dict[str, torch.Tensor]:
        logits, pred_boxes = check_predictions("outputs", outputs)
        matches = self.matcher(outputs, targets)
        result: dict[str, torch.Tensor] = {}
        if "labels" in self.losses:
            result.update(self.loss_labels(logits, targets, matches, num_boxes, log))
        if "boxes" in self.losses:
            result.update(self.loss_boxes(pred_boxes, targets, matches, num_boxes))
        if "cardinality" in self.losses:
            result.update(self.loss_cardinality(logits, targets))
        return result

    def weight_of(self, name: str) -> float | None:
        """The weight of a loss term: its own entry in ``weight_dict``, else its base name's."""
        if name in self.weight_dict:
            return self.weight_dict[name]
        return self.weight_dict.get(_SUFFIX.sub("", name))

    def forward(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args:
            outputs: ``logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (normalized cx, cy, w,
                h); optional ``auxiliary_outputs`` (list of such dicts, one per earlier decoder
                layer) and ``enc_outputs`` (such a dict for the two-stage proposals).
            targets: B dicts with ``class_labels`` int64 ``[N_i]`` and ``boxes`` ``[N_i, 4]``.

        Returns:
            ``(total, losses)``: the weighted sum, and every term by name.
        """
        logits, _ = check_predictions("outputs", outputs)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"outputs['logits'] must have num_classes={self.num_classes} channels, got {logits.shape[-1]}")
        check_targets(targets, logits.shape[0], self.num_classes)
        num_boxes = average_num_boxes(targets, logits.device)

        losses = self._losses_of(outputs, targets, num_boxes, log=True)
        for index, auxiliary in enumerate(outputs.get("auxiliary_outputs") or ()):
            losses.update({f"{k}_{index}": v for k, v in self._losses_of(auxiliary, targets, num_boxes, log=False).items()})
        if outputs.get("enc_outputs") is not None:
            agnostic = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in targets]
            losses.update({f"{k}_enc": v for k, v in self._losses_of(outputs["enc_outputs"], agnostic, num_boxes, log=False).items()})

        total = logits.new_zeros(())
        for name, value in losses.items():
            weight = self.weight_of(name)
            if weight is not None:
                total = total + weight * value
        return total, losses


def _matched_queries(matches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)])
    query_index = torch.cat([rows for rows, _ in matches])
    return batch_index.to(device), query_index.to(device)
