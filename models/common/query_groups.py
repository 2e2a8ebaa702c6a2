"""Query groups: training-time sets of decoder queries next to the matching (one-to-one) queries.

A detector's decoder always runs the *matching* queries, the only ones at inference. In training,
each active ``QueryGroup`` adds a block of queries and supplies four things:

1. its queries (``GroupQueries``): taken from the query selection's extra output rows
   (``selected > 0``: hybrid one-to-many, Group-DETR groups) or made by the group (denoising);
2. its block of the decoder's self-attention mask: a group never sees another group; the matching
   queries never see a group; a group with ``sees_matching`` sees the matching queries;
3. its slice of the per-layer outputs (``QueryLayout`` cuts the decoder outputs apart);
4. its loss terms under its own name, with their weighted total (``GroupLoss``).

Query order along the decoder's query axis::

    [groups placed "before"] [matching] [groups placed "after", in the order given]

and the query selection's output rows are ``[matching | after-group 1's | after-group 2's | ...]``
for the groups that take ``selected`` rows (in eval only the matching rows are used; a top-k
selection sorted by score gives the same first rows whatever its k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

MATCHING = "matching"


class GroupQueries(NamedTuple):
    """The queries one group adds (N of them).

    target ``[B, N, C]``; reference_points ``[B, N, 2 or 4]``; query_position ``[B, N, C]`` or None
    (like the matching queries'); attention_block bool ``[N, N]`` (True = may not attend) or None
    (every query of the group sees the whole group); state: anything the group's loss needs back.
    """

    target: torch.Tensor
    reference_points: torch.Tensor
    query_position: torch.Tensor | None = None
    attention_block: torch.Tensor | None = None
    state: Any = None


class GroupLoss(NamedTuple):
    """``terms``: every loss term by its full name (with the group's suffix); ``total``: their
    weighted sum, the group's part of the detector's loss."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor


class QueryBlock(NamedTuple):
    """One contiguous block of the decoder's queries: ``name`` (``"matching"`` or a group's
    ``name``), ``start``, ``size``, and the group's ``state``."""

    name: str
    start: int
    size: int
    state: Any = None


class QueryLayout(NamedTuple):
    """The blocks of the decoder's query axis, in order."""

    blocks: tuple[QueryBlock, ...]

    def block(self, name: str) -> QueryBlock:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"no query block named {name!r}; blocks: {[b.name for b in self.blocks]}")

    def take(self, tensor: torch.Tensor | None, name: str, dim: int) -> torch.Tensor | None:
        """The ``name`` block of ``tensor`` along its query dimension ``dim`` (None stays None)."""
        if tensor is None:
            return None
        block = self.block(name)
        return tensor.narrow(dim, block.start, block.size)

    @property
    def is_plain(self) -> bool:
        """True when the matching queries are the only ones."""
        return len(self.blocks) == 1


class QueryGroup(nn.Module):
    """Base of the training-time query groups (see the module docstring).

    Attributes a group sets:
        name: its loss-term suffix and its key in ``group_outputs`` (e.g. ``"one2many"``, ``"dn"``).
        placement: ``"before"`` or ``"after"`` the matching queries.
        selected: how many of the query selection's output rows it takes (0: it makes its own).
        sees_matching: its queries may attend to the matching queries.

    A group's parameters (e.g. a label embedding) are stored at the model's level in state dicts,
    like the query selection's, so checkpoint keys do not depend on how a variant is composed.
    """

    name: str = ""
    placement: str = "after"
    selected: int = 0
    sees_matching: bool = False

    def active(self, training: bool, targets: Sequence[Mapping[str, torch.Tensor]] | None) -> bool:
        """Whether the group runs in this call (default: in training)."""
        return training

    def queries(self, selected: Any, targets: Sequence[Mapping[str, torch.Tensor]] | None) -> GroupQueries | None:
        """The group's queries. ``selected``: its rows of the query selection's output (a
        ``SelectedQueries`` cut to ``self.selected`` rows) or None when it takes none. None = the
        group sits this call out (e.g. no targets to denoise)."""
        raise NotImplementedError

    def loss(self, criterion: nn.Module, predictions: dict[str, Any], targets: list[dict[str, torch.Tensor]], state: Any) -> GroupLoss:
        """The group's loss terms on its own predictions (``{"logits" [B, N, K], "pred_boxes"
        [B, N, 4], "auxiliary_outputs": [...]}``)."""
        raise NotImplementedError


def check_groups(groups: Sequence[QueryGroup] | None) -> nn.ModuleList:
    """``groups`` as a ``ModuleList``; ``ValueError`` naming a bad or repeated group name."""
    result = nn.ModuleList(groups or [])
    names = set()
    for group in result:
        if not isinstance(group, QueryGroup):
            raise TypeError(f"groups must hold QueryGroup modules, got {type(group).__name__}")
        if not group.name or not group.name.replace("_", "").isalnum() or group.name == MATCHING or group.name in names:
            raise ValueError(f"groups: each group needs a unique alphanumeric name other than {MATCHING!r}, got {group.name!r}")
        if group.placement not in ("before", "after"):
            raise ValueError(f"group {group.name!r}: placement must be 'before' or 'after', got {group.placement!r}")
        if group.placement == "before" and group.selected:
            raise ValueError(f"group {group.name!r}: only groups placed 'after' the matching queries can take selected rows")
        names.add(group.name)
    return result


def self_attention_mask(layout: QueryLayout, blocks: Mapping[str, torch.Tensor | None], sees_matching: set[str], device: torch.device) -> torch.Tensor:
    """bool ``[N, N]`` (True = may not attend) for a layout: every block sees itself (within its
    ``blocks[name]`` pattern, when given), the groups in ``sees_matching`` also see the matching
    block, and nothing else is visible."""
    total = sum(block.size for block in layout.blocks)
    mask = torch.ones(total, total, dtype=torch.bool, device=device)
    matching = layout.block(MATCHING)
    for block in layout.blocks:
        rows = slice(block.start, block.start + block.size)
        pattern = blocks.get(block.name)
        mask[rows, rows] = False if pattern is None else pattern.to(device)
        if block.name in sees_matching:
            mask[rows, matching.start : matching.start + matching.size] = False
    return mask
