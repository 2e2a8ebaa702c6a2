"""Contrastive denoising as a query group: noised copies of the targets placed before the matching
queries, which may see the matching queries but are never seen by them.

``DenoisingGroupBase`` is the group around a generator step (``denoising_queries(targets)``, a
``detr_blocks`` ``DenoisingQueries`` or None); ``DenoisingGroup`` is DINO's CDN
(``contrastive_denoising_queries``, embedding ``label_enc``). Terms ``<term>_dn`` and
``<term>_dn_<i>`` (``detr_blocks.denoising_losses``, the known matching and the normalizer
``num_boxes · groups``); weights those of the base terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detr_blocks.denoising import DenoisingQueries, contrastive_denoising_queries, denoising_losses
from detr_blocks.losses import average_num_boxes
from models.common.query_groups import GroupLoss, GroupQueries, QueryGroup


class DenoisingGroupBase(QueryGroup):
    """A denoising group whose queries come from ``denoising_queries(targets)`` (a subclass's
    generator, with the embedding it owns); reference points ``sigmoid(box_logits)``.

    Args:
        label_noise_ratio: in [0, 1]; box_noise_scale: >= 0 (the generators' noise settings).
        box_position: ``box_logits [B, N, 4] → query_position [B, N, C]`` when the matching queries
            carry positions (e.g. a two-stage selection's own box embedding); None when the
            decoder makes positions from boxes itself.
    """

    name = "dn"
    placement = "before"
    sees_matching = True

    def __init__(
        self, *, label_noise_ratio: float, box_noise_scale: float, box_position: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= label_noise_ratio <= 1.0:
            raise ValueError(f"label_noise_ratio must be in [0, 1], got {label_noise_ratio!r}")
        if not box_noise_scale >= 0:
            raise ValueError(f"box_noise_scale must be >= 0, got {box_noise_scale!r}")
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.box_position = box_position

    def denoising_queries(self, targets: Sequence[Mapping[str, torch.Tensor]]) -> DenoisingQueries | None:
        """The generator step: the group's queries from the targets, None for none this call."""
        raise NotImplementedError

    def queries(self, selected: Any, targets: Any) -> GroupQueries | None:
        denoising = self.denoising_queries(targets)
        if denoising is None:
            return None
        position = None if self.box_position is None else self.box_position(denoising.box_logits)
        return GroupQueries(denoising.content, denoising.box_logits.sigmoid(), position, denoising.attn_mask, denoising.meta)

    def loss(self, criterion: nn.Module, predictions: dict[str, Any], targets: list[dict[str, torch.Tensor]], state: Any) -> GroupLoss:
        terms = denoising_losses(criterion, predictions, targets, state, average_num_boxes(targets, predictions["logits"].device))
        return GroupLoss(terms, criterion.weighted_total(terms, predictions["logits"]))


class DenoisingGroup(DenoisingGroupBase):
    """DINO's denoising queries made from the targets, in training with labels and ``dn_number > 0``.

    Args:
        num_classes: K (the range of flipped labels).
        label_book_size: rows of the label embedding minus one (>= num_classes).
        d_model: C.
        dn_number, label_noise_ratio, box_noise_scale, eps: as ``contrastive_denoising_queries``.
        box_position: as ``DenoisingGroupBase`` (None for DINO, whose decoder makes positions from
            boxes).

    Parameters: ``label_enc`` (``nn.Embedding(label_book_size + 1, C)``; stored as ``label_enc``).
    """

    def __init__(
        self,
        num_classes: int,
        label_book_size: int,
        d_model: int,
        *,
        dn_number: int,
        label_noise_ratio: float,
        box_noise_scale: float,
        eps: float,
        box_position: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale, box_position=box_position)
        if not isinstance(dn_number, int) or dn_number < 0:
            raise ValueError(f"dn_number must be a non-negative int, got {dn_number!r}")
        if label_book_size < num_classes:
            raise ValueError(f"label_book_size must be >= num_classes ({num_classes}), got {label_book_size}")
        self.num_classes = num_classes
        self.dn_number = dn_number
        self.eps = eps
        self.label_enc = nn.Embedding(label_book_size + 1, d_model)

    def active(self, training: bool, targets: Any) -> bool:
        return training and targets is not None and self.dn_number > 0

    def denoising_queries(self, targets: Sequence[Mapping[str, torch.Tensor]]) -> DenoisingQueries:
        return contrastive_denoising_queries(
            targets,
            self.num_classes,
            self.label_enc,
            0,
            dn_number=self.dn_number,
            label_noise_ratio=self.label_noise_ratio,
            box_noise_scale=self.box_noise_scale,
            eps=self.eps,
        )
