"""RT-DETR's contrastive denoising group: ``detr_blocks.padded_denoising_queries`` (targets padded
to the batch's largest count, noise drawn as the authors' code and ``transformers`` draw it) with
RT-DETR's label embedding, under ``transformers``' name and shape.

Terms ``<term>_dn`` (last decoder layer) and ``<term>_dn_<i>`` (earlier layer i), unweighted, as the
other denoising groups; ``transformers`` names every layer's term ``<term>_dn_<i>``, the last one
included (i = decoder_layers − 1), and weights it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detr_blocks.denoising import DenoisingQueries
from detr_blocks.padded_denoising import padded_denoising_queries
from models.common.denoising_group import DenoisingGroupBase

# RT-DETR's inverse_sigmoid eps
BOX_EPS = 1e-5


class RTDetrDenoisingGroup(DenoisingGroupBase):
    """RT-DETR's denoising queries, in training with labels, ``num_denoising > 0`` and at least one
    target in the batch (otherwise ``queries`` gives None: no denoising queries that call).

    Args (``transformers``' ``RTDetrConfig`` names and defaults):
        num_labels: K.
        d_model: C.
        num_denoising: the number of denoising queries aimed at (``max(num_denoising // M, 1)``
            groups of ``2·M``, M = the batch's largest target count); 0 switches denoising off.
        label_noise_ratio: in [0, 1]; box_noise_scale: >= 0 (0: the boxes go in as they are, not as
            logits, as the authors' code; see ``detr_blocks.padded_denoising``).

    Parameters: ``denoising_class_embed`` (``nn.Embedding(K + 1, C, padding_idx=K)``, Xavier-uniform
    as ``transformers`` initialises it, padding row included; stored at the model's level as
    ``denoising_class_embed.weight``); None with ``num_denoising == 0``, as ``transformers`` then
    has no such weight.
    """

    def __init__(self, num_labels: int, d_model: int, *, num_denoising: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0) -> None:
        super().__init__(label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)
        for name, value, least in (("num_labels", num_labels, 1), ("d_model", d_model, 1), ("num_denoising", num_denoising, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.num_labels = num_labels
        self.num_denoising = num_denoising
        self.denoising_class_embed = None
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_labels + 1, d_model, padding_idx=num_labels)
            nn.init.xavier_uniform_(self.denoising_class_embed.weight)

    def active(self, training: bool, targets: Any) -> bool:
        return training and targets is not None and self.num_denoising > 0

    def denoising_queries(self, targets: Sequence[Mapping[str, torch.Tensor]]) -> DenoisingQueries | None:
        return padded_denoising_queries(
            targets, self.num_labels, self.denoising_class_embed, 0, num_denoising=self.num_denoising,
            label_noise_ratio=self.label_noise_ratio, box_noise_scale=self.box_noise_scale, eps=BOX_EPS,
        )
