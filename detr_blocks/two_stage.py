"""Two-stage Deformable DETR: every encoder pixel proposes a box; the best ones seed the decoder.

The pieces, in the order a model uses them::

    memory, proposals = encoder_output_proposals(encoder_output, padding_mask, spatial_shapes)
    memory = enc_output_norm(enc_output(memory))            # the model's Linear + LayerNorm
    class_logits = class_embed[-1](memory)                  # [B, S, K]
    coord_logits = bbox_embed[-1](memory) + proposals       # [B, S, 4], logit space
    top_logits, _ = select_top_proposals(class_logits, coord_logits, num_queries)   # scoring="max_class": DINO
    reference_points = top_logits.sigmoid()                 # decoder's [B, Q, 4] references
    query_pos, target = pos_trans_norm(pos_trans(box_sine_embedding(top_logits.sigmoid(), order="xy"))).split(C, -1)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

from detr_blocks._common import check_padding_mask, shape_list
from detr_blocks.query_position import box_sine_embedding


def encoder_output_proposals(
    memory: torch.Tensor,
    padding_mask: torch.Tensor | None,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    base_size: float = 0.05,
    valid_range: tuple[float, float] = (0.01, 0.99),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One proposal per encoder pixel: a box centred on the pixel with size ``base_size·2^l`` at level l.

    Centres are normalized by the real (unpadded) size of the level. Proposals with any coordinate
    outside ``valid_range`` (open interval), and padded positions, are invalid: their logits are
    +inf and their memory rows are zeroed.

    Args:
        memory: ``[B, S, C]`` encoder output.
        padding_mask: bool ``[B, S]``, True = padding; None means no padding.
        spatial_shapes: ``[L, 2]`` (H, W) per level.
        base_size: width and height of a level-0 proposal (normalized).
        valid_range: proposals must lie strictly inside it.

    Returns:
        ``(memory [B, S, C] with invalid rows zeroed, proposals [B, S, 4])``; proposals are
        (cx, cy, w, h) in logit space (``inverse_sigmoid``), +inf where invalid.
    """
    if memory.dim() != 3:
        raise ValueError(f"memory must have shape [B, S, C], got {tuple(memory.shape)}")
    batch, length, _ = memory.shape
    shapes = shape_list(spatial_shapes)
    if sum(h * w for h, w in shapes) != length:
        raise ValueError(f"memory has S={length} positions but spatial_shapes {shapes} add up to {sum(h * w for h, w in shapes)}")
    if padding_mask is None:
        padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=memory.device)
    check_padding_mask("padding_mask", padding_mask, batch, length)
    low, high = valid_range
    dtype, device = memory.dtype, memory.device

    proposals = []
    start = 0
    for level, (height, width) in enumerate(shapes):
        level_mask = padding_mask[:, start : start + height * width].view(batch, height, width)
        real_height = (~level_mask[:, :, 0]).sum(1)
        real_width = (~level_mask[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=dtype, device=device),
            torch.linspace(0, width - 1, width, dtype=dtype, device=device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)  # [H, W, 2] as (x, y)
        real_size = torch.stack([real_width, real_height], -1).view(batch, 1, 1, 2)
        centres = (grid[None] + 0.5) / real_size
        sizes = torch.full_like(centres, base_size * (2.0**level))
        proposals.append(torch.cat([centres, sizes], -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > low) & (proposals < high)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = padding_mask[..., None] | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals


PROPOSAL_SCORINGS = ("first_class", "max_class")


def proposal_scores(class_logits: torch.Tensor, scoring: str | Callable[[torch.Tensor], torch.Tensor] = "first_class") -> torch.Tensor:
    """Score of every proposal: ``[B, S, K]`` class logits → ``[B, S]``.

    ``"first_class"``: the logit of class 0 (Deformable DETR two-stage: its encoder head is
    trained class-agnostically on class 0); ``"max_class"``: the maximum over classes (DINO's mixed
    query selection); or a callable ``[B, S, K] -> [B, S]``.
    """
    if scoring == "first_class":
        return class_logits[..., 0]
    if scoring == "max_class":
        return class_logits.max(-1).values
    if callable(scoring) and not isinstance(scoring, str):
        scores = scoring(class_logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != class_logits.shape[:2]:
            raise ValueError(f"scoring must return [B, S] = {tuple(class_logits.shape[:2])} scores, got {tuple(getattr(scores, 'shape', ()))}")
        return scores
    raise ValueError(f"scoring must be one of {PROPOSAL_SCORINGS} or a callable, got {scoring!r}")


def select_top_proposals(
    class_logits: torch.Tensor,
    coord_logits: torch.Tensor,
    k: int,
    *,
    scoring: str | Callable[[torch.Tensor], torch.Tensor] = "first_class",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-scoring proposals (see ``proposal_scores``; default: the first-class logit,
    as Deformable DETR, whose encoder head is trained class-agnostically on class 0).

    Args:
        class_logits: ``[B, S, K]``.
        coord_logits: ``[B, S, 4]`` box logits.
        k: number to keep (<= S).
        scoring: ``"first_class"``, ``"max_class"`` (DINO) or a callable ``[B, S, K] -> [B, S]``.

    Returns:
        ``(coord_logits [B, k, 4] detached, indices int64 [B, k])``, in decreasing score order;
        detached because the decoder uses them as reference points, through which the paper does
        not backpropagate (gather ``coord_logits`` with ``indices`` for the undetached ones).
    """
    if class_logits.dim() != 3 or coord_logits.dim() != 3 or coord_logits.shape[-1] != 4 or class_logits.shape[:2] != coord_logits.shape[:2]:
        raise ValueError(f"class_logits must be [B, S, K] and coord_logits [B, S, 4] with the same B, S; got {tuple(class_logits.shape)} and {tuple(coord_logits.shape)}")
    if not isinstance(k, int) or not 1 <= k <= class_logits.shape[1]:
        raise ValueError(f"k must be an int in [1, S={class_logits.shape[1]}], got {k!r}")
    indices = torch.topk(proposal_scores(class_logits, scoring), k, dim=1).indices
    selected = torch.gather(coord_logits, 1, indices[..., None].expand(-1, -1, 4))
    return selected.detach(), indices


def gather_proposals(class_logits: torch.Tensor, coord_logits: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected proposals as their heads scored them, with their graph (what a loss on the
    selected proposals supervises, e.g. DINO's).

    Args:
        class_logits: ``[B, S, K]``; coord_logits: ``[B, S, 4]`` box logits; indices: int64 ``[B, k]``
            (``select_top_proposals``).

    Returns:
        ``(class logits [B, k, K], boxes [B, k, 4])``, the boxes normalized (sigmoid of the logits).
    """
    if indices.dim() != 2 or indices.shape[0] != class_logits.shape[0]:
        raise ValueError(f"indices must be [B={class_logits.shape[0]}, k], got {tuple(indices.shape)}")
    gather = indices.unsqueeze(-1)
    selected_class = torch.gather(class_logits, 1, gather.expand(-1, -1, class_logits.shape[-1]))
    selected_boxes = torch.gather(coord_logits, 1, gather.expand(-1, -1, coord_logits.shape[-1])).sigmoid()
    return selected_class, selected_boxes


def proposal_position_embedding(
    proposal_logits: torch.Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> torch.Tensor:
    """Deprecated name of ``box_sine_embedding(proposal_logits.sigmoid(), ..., order="xy")``:
    ``[B, Q, 4]`` box logits → ``[B, Q, 4F]``, (cx, cy, w, h) blocks of F channels."""
    warnings.warn(
        "detr_blocks.proposal_position_embedding(logits) is deprecated: use box_sine_embedding(logits.sigmoid(), order='xy')",
        DeprecationWarning,
        stacklevel=2,
    )
    if proposal_logits.dim() != 3 or proposal_logits.shape[-1] != 4:
        raise ValueError(f"proposal_logits must have shape [B, Q, 4], got {tuple(proposal_logits.shape)}")
    return box_sine_embedding(proposal_logits.sigmoid(), num_pos_feats, temperature, scale, order="xy")
