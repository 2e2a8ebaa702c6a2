"""Set-prediction losses of Deformable DETR: ``sigmoid_focal_loss`` and ``SetCriterion`` (extensible
by loss name; every term weighted or explicitly logged)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detr_blocks._targets import check_predictions, check_targets
from detr_blocks.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_blocks.matcher import HungarianMatcher

DEFAULT_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
LOGGED_TERMS = ("class_error", "cardinality_error")
_BUILTIN_TERMS = {"labels": ("loss_ce",), "boxes": ("loss_bbox", "loss_giou"), "cardinality": ()}

LossFunction = Callable[
    [Mapping[str, torch.Tensor], Sequence[Mapping[str, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]], float],
    Mapping[str, torch.Tensor],
]


def weight_names(name: str) -> list[str]:
    """The names a term's weight is looked up under, most specific first: the name itself, then the
    name with one more trailing ``_<suffix>`` removed, down to a two-word base name. Suffixes are
    open: a decoder layer (``_0``), the two-stage encoder (``_enc``), a query group's name (``_dn``,
    ``_one2many``, ``_group1``, a plug-in's own), in any order:
    ``loss_ce_dn_3`` → ``[loss_ce_dn_3, loss_ce_dn, loss_ce]``,
    ``loss_bbox_0_one2many`` → ``[loss_bbox_0_one2many, loss_bbox_0, loss_bbox]``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    names = [name]
    while True:
        head, separator, tail = names[-1].rpartition("_")
        if not separator or not tail or "_" not in head:
            return names
        names.append(head)


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

    For the final outputs, every entry of ``outputs["auxiliary_outputs"]`` (suffix ``_i``),
    ``outputs["enc_outputs"]`` (two-stage proposals, suffix ``_enc``) and ``outputs["interm_outputs"]``
    (selected proposals, class-aware, suffix ``_interm``), each matched separately:

    - ``loss_ce``: sigmoid focal loss over all queries and classes against one-hot targets (no
      "no-object" class: unmatched queries are all zeros), summed and divided by the number of
      target boxes (``average_num_boxes``), as the paper's code;
    - ``loss_bbox``: L1 between matched (cx, cy, w, h) boxes / number of boxes;
    - ``loss_giou``: 1 − GIoU of matched boxes / number of boxes;
    - ``cardinality_error`` (logged, no gradient): |#queries whose argmax is not the last class −
      #targets|, averaged over images (the paper's definition, kept for comparable logs);
    - ``class_error`` (final outputs only, logged): 100 − top-1 accuracy of matched queries.

    The two-stage encoder loss is class-agnostic: every target gets class 0, as in the paper's code
    (``encoder_targets``; Hugging Face's ``DeformableDetrForObjectDetection`` does not compute it).

    Weights. A term's weight is looked up under ``weight_names(name)``: its full name first, then
    with trailing suffixes removed one at a time (``loss_ce_dn_3`` → ``loss_ce_dn`` → ``loss_ce``;
    any ``_<suffix>``, see ``weight_names``); the first hit
    wins, so a full-name entry overrides the base name's. A term found nowhere is *logged* (returned,
    not added) if one of those names is in ``logged``; otherwise ``forward`` raises: no loss term
    silently drops out of the total. (For compatibility, a built-in term of a requested loss —
    ``loss_ce``, ``loss_bbox``, ``loss_giou`` — missing from an explicit ``weight_dict`` is logged,
    with a warning at construction; give it weight 0 to exclude it without a warning.)

    Extending. ``get_loss(name, outputs, targets, indices, num_boxes, log=...)`` computes one loss
    by name. Add a loss either by registering a function, ``extra_losses={"name": fn}`` with ``fn(outputs,
    targets, indices, num_boxes) -> {term: tensor}``, or in a subclass that adds the name to
    ``loss_names`` and overrides ``get_loss`` (calling ``super().get_loss`` for the others).
    ``compute_losses`` (which output sets, which suffixes) and ``encoder_targets`` are the other
    overridable steps.

    Args:
        num_classes: K, the logits' last dimension.
        matcher: a ``HungarianMatcher`` (or any module with its call signature).
        weight_dict: weights of the total, by base or full term name. Default: the paper's
            ``{loss_ce: 2, loss_bbox: 5, loss_giou: 2}`` (Hugging Face uses ``loss_ce: 1``).
        losses: which losses to compute: among ``loss_names`` (``"labels"``, ``"boxes"``,
            ``"cardinality"``) and the keys of ``extra_losses``.
        focal_alpha, focal_gamma: of the focal loss.
        extra_losses: more losses by name (see above).
        logged: term base names that are reported but never weighted (default
            ``("class_error", "cardinality_error")``).
    """

    loss_names: tuple[str, ...] = ("labels", "boxes", "cardinality")

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        weight_dict: Mapping[str, float] | None = None,
        losses: Iterable[str] = ("labels", "boxes", "cardinality"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        *,
        extra_losses: Mapping[str, LossFunction] | None = None,
        logged: Iterable[str] = LOGGED_TERMS,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.extra_losses = dict(extra_losses or {})
        for name, function in self.extra_losses.items():
            if not isinstance(name, str) or not callable(function):
                raise TypeError(f"extra_losses must map names to callables, got {name!r}: {type(function).__name__}")
        self.losses = tuple(losses)
        known = set(self.loss_names) | set(self.extra_losses)
        unknown = set(self.losses) - known
        if unknown:
            raise ValueError(f"losses must be among {sorted(known)}, got unknown {sorted(unknown)}")
        self.num_classes = num_classes
        self.matcher = HungarianMatcher(focal_alpha=focal_alpha, focal_gamma=focal_gamma) if matcher is None else matcher
        self.weight_dict = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        for name, weight in self.weight_dict.items():
            if not isinstance(name, str) or not isinstance(weight, (int, float)):
                raise ValueError(f"weight_dict must map term names to numbers, got {name!r}: {weight!r}")
        self.logged = set(logged)
        unweighted = [t for loss in self.losses for t in _BUILTIN_TERMS.get(loss, ()) if t not in self.weight_dict]
        if unweighted:
            warnings.warn(
                f"weight_dict has no weight for {unweighted}: these terms are reported but not added to the total "
                "(give them a weight, 0 to exclude them explicitly)",
                stacklevel=2,
            )
            self.logged.update(unweighted)
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

    def get_loss(
        self,
        name: str,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_boxes: float,
        *,
        log: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One loss by name.

        Args:
            name: one of ``loss_names`` or a key of ``extra_losses``.
            outputs: ``logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (and whatever an extra
                loss reads).
            targets: B dicts with ``class_labels`` int64 ``[N_i]`` and ``boxes`` ``[N_i, 4]``.
            indices: B pairs ``(query_index int64 [M_i], target_index int64 [M_i])``: the matching.
            num_boxes: the normalizer.
            log: also return logged-only metrics (``class_error``).

        Returns:
            ``{term name: scalar tensor}``.
        """
        if name == "labels":
            return self.loss_labels(outputs["logits"], targets, indices, num_boxes, log)
        if name == "boxes":
            return self.loss_boxes(outputs["pred_boxes"], targets, indices, num_boxes)
        if name == "cardinality":
            return self.loss_cardinality(outputs["logits"], targets)
        if name in self.extra_losses:
            return dict(self.extra_losses[name](outputs, targets, indices, num_boxes))
        raise ValueError(f"name must be a loss this criterion knows ({sorted(set(self.loss_names) | set(self.extra_losses))}), got {name!r}")

    def losses_for(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        num_boxes: float,
        *,
        log: bool = False,
        indices: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every requested loss of one set of predictions, matched by ``self.matcher`` unless
        ``indices`` (e.g. the known matching of denoising queries) is given."""
        check_predictions("outputs", outputs)
        if indices is None:
            indices = self.matcher(outputs, targets)
        ordered = [n for n in self.loss_names if n in self.losses] + [n for n in self.losses if n not in self.loss_names]
        result: dict[str, torch.Tensor] = {}
        for name in ordered:
            result.update(self.get_loss(name, outputs, targets, indices, num_boxes, log=log))
        return result

    def encoder_targets(self, targets: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Targets of the two-stage encoder proposals: every label set to 0 (class-agnostic)."""
        return [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in targets]

    def compute_losses(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, torch.Tensor]], num_boxes: float
    ) -> dict[str, torch.Tensor]:
        """Every term by name: final outputs, ``auxiliary_outputs`` (``_i``), ``enc_outputs`` (``_enc``),
        ``interm_outputs`` (``_interm``: the selected proposals, class-aware, matched on their own;
        DINO, RT-DETR)."""
        losses = self.losses_for(outputs, targets, num_boxes, log=True)
        for index, auxiliary in enumerate(outputs.get("auxiliary_outputs") or ()):
            losses.update({f"{k}_{index}": v for k, v in self.losses_for(auxiliary, targets, num_boxes).items()})
        if outputs.get("enc_outputs") is not None:
            encoder = self.losses_for(outputs["enc_outputs"], self.encoder_targets(targets), num_boxes)
            losses.update({f"{k}_enc": v for k, v in encoder.items()})
        if outputs.get("interm_outputs") is not None:
            losses.update({f"{k}_interm": v for k, v in self.losses_for(outputs["interm_outputs"], targets, num_boxes).items()})
        return losses

    def weight_of(self, name: str) -> float | None:
        """The weight of a loss term (see the class docstring), or None if ``weight_dict`` has none."""
        for candidate in weight_names(name):
            if candidate in self.weight_dict:
                return self.weight_dict[candidate]
        return None

    def weighted_total(self, losses: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Σ weight · term over the weighted terms; raises ``ValueError`` for a term that is neither
        weighted nor logged."""
        total = like.new_zeros(())
        for name, value in losses.items():
            weight = self.weight_of(name)
            if weight is not None:
                total = total + weight * value
            elif not any(candidate in self.logged for candidate in weight_names(name)):
                raise ValueError(
                    f"loss term {name!r} has no weight: weight_dict covers none of {weight_names(name)} "
                    f"and it is not logged ({sorted(self.logged)}); add a weight (0 to exclude it) or list it in logged="
                )
        return total

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
        losses = self.compute_losses(outputs, targets, num_boxes)
        return self.weighted_total(losses, logits), losses


def _matched_queries(matches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)])
    query_index = torch.cat([rows for rows, _ in matches])
    return batch_index.to(device), query_index.to(device)
