"""How a decoder layer's output moves the reference points: the decoder's refinement policy.

``DeformableDecoder`` calls its policy after every layer::

    next_reference, recorded = refinement(index, hidden_states, reference_points, box_head)

- ``next_reference`` ``[B, Q, 2 or 4]`` is what layer ``index + 1`` receives;
- ``recorded`` ``[B, Q, 2 or 4]`` is what the decoder returns for layer ``index`` in
  ``intermediate_reference_points``, the reference that the prediction of layer ``index + 1`` is
  made against (``refine_boxes(bbox_embed[i + 1](h), recorded_i)``).

Policies:
    ``NoRefinement``: the references stay as given (Deformable DETR without box refinement).
    ``DetachedRefinement``: refine through the layer's box head, then detach; next = recorded
        (Deformable DETR's iterative box refinement).
    ``LookForwardTwice``: refine, feed the detached boxes to the next layer, but record the
        undetached ones, so that the loss of layer i + 1 also trains layer i's box head (DINO).

A policy is a module without parameters (so it adds no checkpoint keys); write another by
subclassing ``ReferenceRefinement`` and overriding ``forward``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from detr_blocks.functional import refine_boxes


class RefinedReferences(NamedTuple):
    """``next_reference``: the next layer's reference points; ``recorded``: this layer's entry of
    ``intermediate_reference_points``. Both ``[B, Q, 2 or 4]`` normalized."""

    next_reference: torch.Tensor
    recorded: torch.Tensor


class ReferenceRefinement(nn.Module):
    """Base of the refinement policies.

    ``needs_box_head``: the decoder refuses to be built without ``bbox_embed`` when True.
    ``forward(index, hidden_states [B, Q, C], reference_points [B, Q, 2|4], box_head: nn.Module |
    None) -> RefinedReferences``; ``box_head`` is the decoder's ``bbox_embed[index]`` (None without
    box heads).
    """

    needs_box_head: bool = False

    def forward(
        self, index: int, hidden_states: torch.Tensor, reference_points: torch.Tensor, box_head: nn.Module | None
    ) -> RefinedReferences:
        raise NotImplementedError


class NoRefinement(ReferenceRefinement):
    """Every layer uses the decoder's input reference points; they are recorded unchanged."""

    def forward(
        self, index: int, hidden_states: torch.Tensor, reference_points: torch.Tensor, box_head: nn.Module | None
    ) -> RefinedReferences:
        return RefinedReferences(reference_points, reference_points)


class BoxHeadRefinement(ReferenceRefinement):
    """Base of the policies that refine through the layer's box head in logit space
    (``refine_boxes(box_head(hidden_states), reference_points, eps)``); subclasses say what is
    detached.

    Args:
        eps: of ``inverse_sigmoid`` (1e-5 in Deformable DETR's code, 1e-3 in DINO's).
    """

    needs_box_head = True

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        self.eps = eps

    def refine(self, hidden_states: torch.Tensor, reference_points: torch.Tensor, box_head: nn.Module) -> torch.Tensor:
        return refine_boxes(box_head(hidden_states), reference_points, self.eps)


class DetachedRefinement(BoxHeadRefinement):
    """``refined = refine_boxes(box_head(hidden_states), reference_points, eps).detach()``, both fed
    to the next layer and recorded (Deformable DETR; the decoder's default with box heads).
    """

    def forward(
        self, index: int, hidden_states: torch.Tensor, reference_points: torch.Tensor, box_head: nn.Module | None
    ) -> RefinedReferences:
        refined = self.refine(hidden_states, reference_points, box_head).detach()
        return RefinedReferences(refined, refined)


class LookForwardTwice(BoxHeadRefinement):
    """``refined = refine_boxes(box_head(hidden_states), reference_points, eps)``; the next layer gets
    ``refined.detach()``, the decoder records ``refined`` with its graph (DINO's "look forward
    twice": layer i + 1's box prediction, made against layer i's recorded boxes, sends gradients
    into layer i's box head and output).
    """

    def forward(
        self, index: int, hidden_states: torch.Tensor, reference_points: torch.Tensor, box_head: nn.Module | None
    ) -> RefinedReferences:
        refined = self.refine(hidden_states, reference_points, box_head)
        return RefinedReferences(refined.detach(), refined)
