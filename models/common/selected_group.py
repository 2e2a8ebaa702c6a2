"""A query group fed by the query selection's extra rows: H-DETR's one-to-many branch and
Group-DETR's extra one-to-one groups are the same mechanism with two settings.

- **Hybrid matching** (H-DETR, Jia et al. 2023): ``SelectedQueriesGroup("one2many", n, repeats=k,
  weight=λ)``: n more queries, matched one-to-one against every target repeated k times, so each
  object gets k positive queries; the branch's loss is weighted by λ.
- **Group DETR** (Chen et al. 2023): ``SelectedQueriesGroup(f"group{g}", Q)`` for g = 1 .. K-1:
  K groups of Q queries, each matched one-to-one against the targets on its own, masked apart.

Only the matching queries run at inference, so neither changes the deployed model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.common.query_groups import GroupLoss, GroupQueries, QueryGroup


class SelectedQueriesGroup(QueryGroup):
    """``num_queries`` of the query selection's rows, supervised against the targets repeated
    ``repeats`` times; terms ``<term>_<name>`` = ``weight`` × the criterion's term (as H-DETR reports
    its one-to-many terms, λ included); the group's total is ``weight`` × the criterion's weighted
    total.

    Args:
        name: loss suffix and ``group_outputs`` key.
        num_queries: rows taken from the query selection (after the matching ones).
        repeats: copies of every target (1: one-to-one, as the matching queries).
        weight: the group's loss weight (H-DETR's ``lambda_one2many``).
    """

    placement = "after"

    def __init__(self, name: str, num_queries: int, *, repeats: int = 1, weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(num_queries, int) or isinstance(num_queries, bool) or num_queries < 1:
            raise ValueError(f"num_queries must be a positive int, got {num_queries!r}")
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"weight must be a non-negative number, got {weight!r}")
        self.name = name
        self.selected = num_queries
        self.repeats = repeats
        self.weight = float(weight)

    def queries(self, selected: Any, targets: Any) -> GroupQueries:
        """The group's rows of the selection, as they are."""
        return GroupQueries(selected.target, selected.reference_points, selected.query_position)

    def loss(self, criterion: nn.Module, predictions: dict[str, Any], targets: list[dict[str, torch.Tensor]], state: Any) -> GroupLoss:
        """The criterion against the repeated targets (its own matching and box count)."""
        repeated = [{**t, "class_labels": t["class_labels"].repeat(self.repeats), "boxes": t["boxes"].repeat(self.repeats, 1)} for t in targets]
        total, terms = criterion(predictions, repeated)
        return GroupLoss({f"{name}_{self.name}": self.weight * value for name, value in terms.items()}, self.weight * total)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_queries={self.selected}, repeats={self.repeats}, weight={self.weight}"
