"""Contrastive denoising queries (DINO's CDN): noised copies of the ground truth that the decoder
learns to reconstruct (positives) or to reject (negatives), next to the matching queries.

In training, a model::

    dn = contrastive_denoising_queries(targets, num_classes, label_embedding, num_queries)
    target = torch.cat([dn.content, matching_content], 1)                  # [B, pad + Q, C]
    reference = torch.cat([dn.box_logits, matching_box_logits], 1).sigmoid()
    out = decoder(target, reference, ..., self_attn_mask=dn.attn_mask)
    dn_part, matching_part = split_denoising_outputs(per_layer_logits, dn.meta, dim=2)
    losses.update(denoising_losses(criterion, dn_outputs, targets, dn.meta, num_boxes))

Layout of the ``pad_size`` denoising queries: ``num_dn_group`` groups of ``2·M`` queries
(M = the largest number of targets of an image in the batch); in group g, query ``g·2M + j`` is
the positive copy of the image's target j and ``g·2M + M + j`` its negative copy; slots past an
image's own targets are zeros (content) and 0 (box logits). Semantics as DINO's
``prepare_for_cdn`` / ``dn_post_process`` and its criterion's denoising matching.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from detr_blocks._targets import check_targets
from detr_blocks.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from detr_blocks.functional import inverse_sigmoid


class DenoisingMeta(NamedTuple):
    """``pad_size``: number of denoising queries (``num_dn_group · group_size``);
    ``num_dn_group``: number of groups; ``group_size``: ``2 · M`` queries per group (M positives,
    then M negatives)."""

    pad_size: int
    num_dn_group: int

    @property
    def group_size(self) -> int:
        return self.pad_size // self.num_dn_group


class DenoisingQueries(NamedTuple):
    """content ``[B, pad, C]``; box_logits ``[B, pad, 4]`` (``inverse_sigmoid`` of noised cx, cy, w,
    h); attn_mask bool ``[pad + Q, pad + Q]``, True = may not attend; meta ``DenoisingMeta``."""

    content: torch.Tensor
    box_logits: torch.Tensor
    attn_mask: torch.Tensor
    meta: DenoisingMeta


def denoising_group_count(max_targets: int, dn_number: int) -> int:
    """Number of denoising groups, as DINO's ``prepare_for_cdn`` computes it: with
    ``2·dn_number >= 100``, ``dn_number // max_targets`` (each group holds ``2·max_targets``
    queries, so about ``2·dn_number`` in all); below that, ``2·dn_number`` groups whatever the
    number of targets (the original code's rule); 1 when there are no targets or the division
    gives 0."""
    if not isinstance(max_targets, int) or max_targets < 0:
        raise ValueError(f"max_targets must be a non-negative int, got {max_targets!r}")
    if not isinstance(dn_number, int) or dn_number < 1:
        raise ValueError(f"dn_number must be a positive int (leave denoising out for 0), got {dn_number!r}")
    if max_targets == 0:
        return 1
    doubled = 2 * dn_number
    groups = doubled // (2 * max_targets) if doubled >= 100 else doubled
    return max(groups, 1)


def denoising_attention_mask(meta: DenoisingMeta, num_queries: int, device: torch.device | None = None) -> torch.Tensor:
    """bool ``[pad + Q, pad + Q]``, True = may not attend: matching queries (the last Q) do not see
    any denoising query, and a denoising group sees no other group (it sees itself and the
    matching queries)."""
    if not isinstance(num_queries, int) or num_queries < 0:
        raise ValueError(f"num_queries must be a non-negative int, got {num_queries!r}")
    pad, size = meta.pad_size, meta.group_size
    mask = torch.zeros(pad + num_queries, pad + num_queries, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    for group in range(meta.num_dn_group):
        rows = slice(group * size, (group + 1) * size)
        mask[rows, : group * size] = True
        mask[rows, (group + 1) * size : pad] = True
    return mask


def check_denoising_arguments(
    targets: Sequence[Mapping[str, torch.Tensor]],
    num_classes: int,
    label_embedding: object,
    num_queries: int,
    label_noise_ratio: float,
    box_noise_scale: float,
) -> None:
    """The argument checks the denoising generators share; each error names its argument."""
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence) or len(targets) == 0:
        raise ValueError(f"targets must be a non-empty list of dicts (one per image), got {type(targets).__name__}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_targets(targets, len(targets), num_classes)
    if not callable(label_embedding):
        raise TypeError(f"label_embedding must be a module or callable (int64 [M] -> [M, C]), got {type(label_embedding).__name__}")
    if not isinstance(num_queries, int) or num_queries < 0:
        raise ValueError(f"num_queries must be a non-negative int, got {num_queries!r}")
    if not 0.0 <= label_noise_ratio <= 1.0:
        raise ValueError(f"label_noise_ratio must be in [0, 1], got {label_noise_ratio!r}")
    if box_noise_scale < 0:
        raise ValueError(f"box_noise_scale must be >= 0, got {box_noise_scale!r}")


def embed_labels(label_embedding: nn.Module | Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``label_embedding`` of int ``labels [...]`` → ``[..., C]``, called on the flattened labels (an
    embedding's rows do not depend on the shape it is called with); ``ValueError`` when it does not
    map ``[M]`` to ``[M, C]``."""
    flat = labels.reshape(-1)
    embedded = label_embedding(flat)
    if not isinstance(embedded, torch.Tensor) or embedded.dim() != 2 or embedded.shape[0] != flat.shape[0]:
        raise ValueError(f"label_embedding must map int64 [M] to [M, C], got {tuple(getattr(embedded, 'shape', ()))} for M={flat.shape[0]}")
    return embedded.view(*labels.shape, embedded.shape[-1])


def signed_magnitudes(sign_bits: torch.Tensor, magnitude: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Relative corner moves of the box noise: ``(magnitude + negative) · (2·sign_bits − 1)``, i.e. in
    (−1, 1) for positive copies and (−2, −1] ∪ [1, 2) for negative ones (``negative`` 1, broadcast)."""
    return (magnitude + negative.to(magnitude.dtype)) * (sign_bits * 2.0 - 1.0)


def corner_half_sizes(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (w/2, h/2, w/2, h/2) of (cx, cy, w, h) boxes: the unit of each corner's move."""
    return torch.cat([boxes[..., 2:], boxes[..., 2:]], dim=-1) * 0.5


def moved_boxes(boxes: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) boxes whose corners (x0, y0, x1, y1) move by ``moves``, clamped to [0, 1]."""
    return box_xyxy_to_cxcywh((box_cxcywh_to_xyxy(boxes) + moves).clamp(0.0, 1.0))


def contrastive_denoising_queries(
    targets: Sequence[Mapping[str, torch.Tensor]],
    num_classes: int,
    label_embedding: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    num_queries: int,
    *,
    dn_number: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 0.4,
    eps: float = 1e-3,
) -> DenoisingQueries:
    """Noised positive and negative queries from the ground truth, with their attention mask.

    Every target is copied ``2·num_dn_group`` times (``denoising_group_count``); in each group one
    positive and one negative copy. Noise, drawn from torch's global generator in this order:

    - labels: each copy's label is replaced, with probability ``label_noise_ratio / 2``, by a class
      drawn uniformly from ``[0, num_classes)`` (``torch.rand`` then ``torch.randint``);
    - boxes (when ``box_noise_scale > 0``): each corner coordinate of the (x0, y0, x1, y1) box moves
      by ``±u · box_noise_scale · (w/2 or h/2)`` with a random sign and ``u`` in [0, 1) for positives,
      [1, 2) for negatives; corners are clamped to [0, 1] and the box converted back to (cx, cy, w, h).

    Content queries are ``label_embedding(noised labels)``; box references ``inverse_sigmoid(noised
    boxes, eps)`` (DINO's ``eps`` is 1e-3).

    Args:
        targets: B dicts with ``class_labels`` int64 ``[N_i]`` in [0, num_classes) and ``boxes``
            ``[N_i, 4]`` normalized (cx, cy, w, h).
        num_classes: K, the range of the flipped labels.
        label_embedding: int64 ``[M]`` → ``[M, C]`` (DINO: ``nn.Embedding(num_classes + 1, C)``).
        num_queries: Q, the number of matching queries placed after the denoising ones.
        dn_number: positive; see ``denoising_group_count``.
        label_noise_ratio: in [0, 1]; box_noise_scale: >= 0.
        eps: of ``inverse_sigmoid``.

    Returns:
        ``DenoisingQueries(content [B, pad, C], box_logits [B, pad, 4], attn_mask [pad+Q, pad+Q],
        meta)``.
    """
    check_denoising_arguments(targets, num_classes, label_embedding, num_queries, label_noise_ratio, box_noise_scale)

    counts = [len(t["class_labels"]) for t in targets]
    batch, max_targets, total = len(targets), max(counts), sum(counts)
    groups = denoising_group_count(max_targets, dn_number)
    copies = 2 * groups
    meta = DenoisingMeta(pad_size=max_targets * copies, num_dn_group=groups)
    device = targets[0]["boxes"].device

    labels = torch.cat([t["class_labels"] for t in targets]).to(device, torch.int64).repeat(copies)  # copy-major
    boxes = torch.cat([t["boxes"] for t in targets]).to(device).repeat(copies, 1)
    image = torch.cat([torch.full((n,), b, dtype=torch.int64, device=device) for b, n in enumerate(counts)]).repeat(copies)
    slot = torch.cat([torch.arange(n, device=device) for n in counts])
    slot = torch.cat([slot + max_targets * copy for copy in range(copies)])

    if label_noise_ratio > 0:
        flip = torch.nonzero(torch.rand(labels.shape, dtype=torch.float32, device=device) < label_noise_ratio * 0.5).view(-1)
        labels = labels.scatter(0, flip, torch.randint(0, num_classes, flip.shape, dtype=torch.int64, device=device))
    if box_noise_scale > 0:
        sign_bits = torch.randint(0, 2, boxes.shape, dtype=torch.float32, device=device)
        magnitude = torch.rand(boxes.shape, dtype=boxes.dtype, device=device)
        negative = (torch.arange(copies, device=device) % 2 == 1).repeat_interleave(total)[:, None]
        moves = signed_magnitudes(sign_bits, magnitude, negative) * corner_half_sizes(boxes) * box_noise_scale
        boxes = moved_boxes(boxes, moves)

    embedded = embed_labels(label_embedding, labels)
    content = embedded.new_zeros(batch, meta.pad_size, embedded.shape[-1])
    box_logits = boxes.new_zeros(batch, meta.pad_size, 4)
    content[image, slot] = embedded
    box_logits[image, slot] = inverse_sigmoid(boxes, eps)
    return DenoisingQueries(content, box_logits, denoising_attention_mask(meta, num_queries, device), meta)


def split_denoising_outputs(tensor: torch.Tensor, meta: DenoisingMeta | None, dim: int = 1) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(denoising part, matching part)`` of a decoder output along the query dimension ``dim``
    (the first ``pad_size`` entries, the rest); ``(None, tensor)`` without denoising (``meta`` None
    or ``pad_size`` 0), as DINO's ``dn_post_process``."""
    if meta is None or meta.pad_size == 0:
        return None, tensor
    if tensor.shape[dim] < meta.pad_size:
        raise ValueError(f"tensor has {tensor.shape[dim]} queries along dim {dim}, fewer than pad_size={meta.pad_size}")
    return tensor.narrow(dim, 0, meta.pad_size), tensor.narrow(dim, meta.pad_size, tensor.shape[dim] - meta.pad_size)


def denoising_matching_indices(
    targets: Sequence[Mapping[str, torch.Tensor]], meta: DenoisingMeta
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The known matching of the positive denoising queries: per image, ``(query_index, target_index)``
    int64, query ``g·group_size + j`` ↔ target j for every group g (group-major). Negative copies
    are unmatched (their targets are "no object")."""
    result = []
    for target in targets:
        count = len(target["class_labels"])
        device = target["class_labels"].device
        target_index = torch.arange(count, device=device).repeat(meta.num_dn_group)
        offsets = torch.arange(meta.num_dn_group, device=device).repeat_interleave(count) * meta.group_size
        result.append((offsets + target_index, target_index))
    return result


def denoising_losses(
    criterion: nn.Module,
    outputs: Mapping[str, object],
    targets: Sequence[Mapping[str, torch.Tensor]],
    meta: DenoisingMeta,
    num_boxes: float,
) -> dict[str, torch.Tensor]:
    """The criterion's losses on the denoising queries, with the known matching and the normalizer
    ``num_boxes · num_dn_group`` (as DINO): terms ``<name>_dn`` for ``outputs`` (``logits``,
    ``pred_boxes`` of the last layer) and ``<name>_dn_<i>`` for ``outputs["auxiliary_outputs"][i]``.

    Args:
        criterion: a ``SetCriterion`` (anything with its ``losses_for(outputs, targets, num_boxes,
            indices=...)``).
        outputs: the denoising part of the predictions (``split_denoising_outputs``).
        targets: as given to ``contrastive_denoising_queries``.
        meta: its ``DenoisingMeta``.
        num_boxes: the matching loss's normalizer (``average_num_boxes``).
    """
    indices = denoising_matching_indices(targets, meta)
    normalizer = num_boxes * meta.num_dn_group
    losses = {f"{k}_dn": v for k, v in criterion.losses_for(outputs, targets, normalizer, indices=indices).items()}
    for index, auxiliary in enumerate(outputs.get("auxiliary_outputs") or ()):
        layer = criterion.losses_for(auxiliary, targets, normalizer, indices=indices)
        losses.update({f"{k}_dn_{index}": v for k, v in layer.items()})
    return losses
