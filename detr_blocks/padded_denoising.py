"""RT-DETR's contrastive denoising queries: DINO's scheme (``detr_blocks.denoising``) over the
targets padded to the batch's largest count, with the noise drawn over the padded tensors.

Same layout, attention mask and known matching as ``contrastive_denoising_queries`` (the result is
a ``DenoisingQueries`` with a ``DenoisingMeta``, so ``split_denoising_outputs``,
``denoising_matching_indices`` and ``denoising_losses`` apply unchanged). What differs, as in the
RT-DETR authors' ``get_contrastive_denoising_training_group`` (and ``transformers``'):

- groups: ``max(num_denoising // M, 1)`` (M = the largest number of targets of an image); no
  queries at all (None) when no image has a target;
- padded slots (an image's slots past its own targets) are queries too, never masked out of their
  group: label ``num_classes`` (the embedding's padding row, ``nn.Embedding(K + 1, C,
  padding_idx=K)``) and box (0, 0, 0, 0), so box logit ``inverse_sigmoid(0, 1e-5)`` ≈ −11.5 with box
  noise; their labels are never flipped (their box noise is 0 since their size is 0);
- the noise is drawn over the padded ``[B, pad]`` slots (``draw_padded_denoising_noise``), so that
  one torch seed gives the reference's exact numbers;
- with ``box_noise_scale == 0`` the boxes are returned as they are, *not* through
  ``inverse_sigmoid``: the authors' definition (RT-DETR v1 ``denoising.py``, and ``transformers``)
  applies it only inside its box-noise branch; a model that takes ``sigmoid(box_logits)`` as its
  reference points then gets sigmoid of the raw boxes, exactly as theirs does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from detr_blocks.denoising import (
    DenoisingMeta,
    DenoisingQueries,
    check_denoising_arguments,
    corner_half_sizes,
    denoising_attention_mask,
    embed_labels,
    moved_boxes,
    signed_magnitudes,
)
from detr_blocks.functional import inverse_sigmoid


class PaddedDenoisingNoise(NamedTuple):
    """The four random draws of ``padded_denoising_queries``, over the ``pad`` padded slots of B
    images (a field may be None when its noise is off):

    - ``label_flip`` float ``[B, pad]`` in [0, 1): a real slot's label is replaced where it is
      below ``label_noise_ratio / 2``;
    - ``new_labels`` int ``[B, pad]`` in [0, K): the replacing labels;
    - ``box_sign`` ``[B, pad, 4]`` of 0 / 1: each corner moves by − / +;
    - ``box_magnitude`` ``[B, pad, 4]`` in [0, 1): the move in half-sizes (+1 for negatives)."""

    label_flip: torch.Tensor | None = None
    new_labels: torch.Tensor | None = None
    box_sign: torch.Tensor | None = None
    box_magnitude: torch.Tensor | None = None


def padded_denoising_meta(counts: Sequence[int], num_denoising: int) -> DenoisingMeta | None:
    """The layout for images with ``counts`` targets: ``max(num_denoising // M, 1)`` groups of
    ``2·M`` queries (M = ``max(counts)``); None when M is 0 (no denoising queries)."""
    if not isinstance(num_denoising, int) or num_denoising < 1:
        raise ValueError(f"num_denoising must be a positive int (leave denoising out for 0), got {num_denoising!r}")
    if len(counts) == 0 or any(not isinstance(n, int) or n < 0 for n in counts):
        raise ValueError(f"counts must be a non-empty list of non-negative ints, got {list(counts)!r}")
    max_targets = max(counts)
    if max_targets == 0:
        return None
    groups = max(num_denoising // max_targets, 1)
    return DenoisingMeta(pad_size=2 * groups * max_targets, num_dn_group=groups)


def draw_padded_denoising_noise(
    batch: int,
    meta: DenoisingMeta,
    num_classes: int,
    *,
    label_noise_ratio: float,
    box_noise_scale: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> PaddedDenoisingNoise:
    """The draws ``padded_denoising_queries`` makes from torch's global generator when given no
    ``noise``, in the reference's order and dtypes: ``rand`` (float32) and ``randint`` (int32) of
    ``[B, pad]`` when ``label_noise_ratio > 0``, then ``randint`` and ``rand`` of ``[B, pad, 4]``
    in ``dtype`` (the boxes') when ``box_noise_scale > 0``."""
    slots = (batch, meta.pad_size)
    noise = PaddedDenoisingNoise()
    if label_noise_ratio > 0:
        flip = torch.rand(slots, dtype=torch.float32, device=device)
        noise = noise._replace(label_flip=flip, new_labels=torch.randint(0, num_classes, slots, dtype=torch.int32, device=device))
    if box_noise_scale > 0:
        sign = torch.randint(0, 2, (*slots, 4), dtype=dtype, device=device)
        noise = noise._replace(box_sign=sign, box_magnitude=torch.rand((*slots, 4), dtype=dtype, device=device))
    return noise


def _check_noise(noise: PaddedDenoisingNoise, shape: tuple[int, int], label_noise_ratio: float, box_noise_scale: float) -> None:
    if not isinstance(noise, PaddedDenoisingNoise):
        raise TypeError(f"noise must be a PaddedDenoisingNoise, got {type(noise).__name__}")
    needed = {"label_flip": shape, "new_labels": shape} if label_noise_ratio > 0 else {}
    if box_noise_scale > 0:
        needed.update(box_sign=(*shape, 4), box_magnitude=(*shape, 4))
    for field, expected in needed.items():
        value = getattr(noise, field)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            raise ValueError(f"noise.{field} must be a tensor of shape {list(expected)}, got {tuple(getattr(value, 'shape', ())) or value!r}")


def padded_denoising_queries(
    targets: Sequence[Mapping[str, torch.Tensor]], num_classes: int,
    label_embedding: nn.Module | Callable[[torch.Tensor], torch.Tensor], num_queries: int, *,
    num_denoising: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0, eps: float = 1e-5,
    noise: PaddedDenoisingNoise | None = None,
) -> DenoisingQueries | None:
    """RT-DETR's noised positive and negative queries, with their attention mask (module docstring).

    Slot ``g·2M + j`` of an image holds its target j (positive copy of group g), slot
    ``g·2M + M + j`` its negative copy; j >= the image's count are padded slots. Noise:

    - labels (``label_noise_ratio > 0``): a real slot's label becomes ``new_labels`` where
      ``label_flip < label_noise_ratio / 2``;
    - boxes (``box_noise_scale > 0``): each corner of (x0, y0, x1, y1) moves by
      ``±u · box_noise_scale · (w/2 or h/2)``, u = ``box_magnitude`` for positives and
      ``box_magnitude + 1`` for negatives, sign from ``box_sign``; clamped to [0, 1], back to
      (cx, cy, w, h), then ``inverse_sigmoid(·, eps)``. Without box noise: the boxes themselves.

    Args:
        targets: B dicts with ``class_labels`` int64 ``[N_i]`` in [0, num_classes) and ``boxes``
            ``[N_i, 4]`` normalized (cx, cy, w, h).
        num_classes: K; also the label of padded slots.
        label_embedding: int ``[M]`` → ``[M, C]``, with a row for label K
            (RT-DETR: ``nn.Embedding(K + 1, C, padding_idx=K)``).
        num_queries: Q, the number of matching queries placed after the denoising ones.
        num_denoising: positive; see ``padded_denoising_meta``.
        label_noise_ratio: in [0, 1]; box_noise_scale: >= 0.
        eps: of ``inverse_sigmoid`` (RT-DETR's is 1e-5).
        noise: the draws to use (``PaddedDenoisingNoise`` over ``[B, pad]``, see
            ``padded_denoising_meta``); None: ``draw_padded_denoising_noise`` from torch's global
            generator (the reference's draws for the same seed).

    Returns:
        ``DenoisingQueries(content [B, pad, C], box_logits [B, pad, 4], attn_mask [pad+Q, pad+Q],
        meta)``, or None when no image has a target.
    """
    check_denoising_arguments(targets, num_classes, label_embedding, num_queries, label_noise_ratio, box_noise_scale)
    counts = [len(t["class_labels"]) for t in targets]
    meta = padded_denoising_meta(counts, num_denoising)
    if meta is None:
        return None
    batch, max_targets, copies = len(targets), max(counts), 2 * meta.num_dn_group
    device, dtype = targets[0]["boxes"].device, targets[0]["boxes"].dtype
    if noise is None:
        noise = draw_padded_denoising_noise(batch, meta, num_classes, label_noise_ratio=label_noise_ratio,
                                            box_noise_scale=box_noise_scale, dtype=dtype, device=device)
    _check_noise(noise, (batch, meta.pad_size), label_noise_ratio, box_noise_scale)

    labels = torch.full((batch, max_targets), num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros(batch, max_targets, 4, dtype=dtype, device=device)
    real = torch.zeros(batch, max_targets, dtype=torch.bool, device=device)
    for image, (target, count) in enumerate(zip(targets, counts)):
        labels[image, :count] = target["class_labels"]
        boxes[image, :count] = target["boxes"]
        real[image, :count] = True
    labels, boxes, real = labels.repeat(1, copies), boxes.repeat(1, copies, 1), real.repeat(1, copies)

    if label_noise_ratio > 0:
        flip = (noise.label_flip.to(device) < label_noise_ratio * 0.5) & real
        labels = torch.where(flip, noise.new_labels.to(device, torch.int64), labels)
    box_logits = boxes
    if box_noise_scale > 0:
        negative = (torch.arange(meta.pad_size, device=device) % meta.group_size >= max_targets)[None, :, None]
        relative = signed_magnitudes(noise.box_sign.to(device, dtype), noise.box_magnitude.to(device, dtype), negative)
        box_logits = inverse_sigmoid(moved_boxes(boxes, relative * (corner_half_sizes(boxes) * box_noise_scale)), eps)

    content = embed_labels(label_embedding, labels)
    return DenoisingQueries(content, box_logits, denoising_attention_mask(meta, num_queries, device), meta)
