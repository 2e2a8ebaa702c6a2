"""Output objects of the DINO models: Deformable DETR's field names, plus DINO's own.

See ``models.common.outputs`` for how they are read (attributes, keys, ``to_tuple()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.common.outputs import DetectionFields, TransformerFields, register_output


@register_output
@dataclass
class DinoModelOutput(TransformerFields):
    """Output of ``DinoModel`` (B batch, Q matching queries, C d_model, S tokens, D decoder layers, K classes).

    - init_reference_points ``[B, Q, 4]``: the top-k proposal boxes fed to the decoder (detached).
    - last_hidden_state ``[B, Q, C]``; intermediate_hidden_states ``[B, D, Q, C]`` (after the
      decoder's shared norm); intermediate_reference_points ``[B, D, Q, 4]``: every layer's refined
      boxes, not detached (look forward twice).
    - decoder_hidden_states / encoder_hidden_states: layer inputs and outputs, when asked.
    - decoder_attentions / cross_attentions / encoder_attentions: per-layer attention weights, when asked
      (shapes as ``DeformableDetrModelOutput``'s).
    - encoder_last_hidden_state ``[B, S, C]``.
    - enc_outputs_class ``[B, S, K]``, enc_outputs_coord_logits ``[B, S, 4]``: every token's proposal.
    - enc_topk_logits ``[B, Q, K]``, enc_topk_boxes ``[B, Q, 4]``: the selected proposals (the
      intermediate loss's predictions; boxes not detached).
    - query_groups: in training with labels, ``{"dn": GroupDecoderOutput}``, the denoising
      queries' slice of the decoder outputs (its ``state`` is the ``detr_blocks.DenoisingMeta``);
      the fields above hold only the matching queries. ``denoising_meta`` reads that state.
    """

    enc_topk_logits: torch.Tensor | None = None
    enc_topk_boxes: torch.Tensor | None = None

    @property
    def denoising_meta(self) -> Any:
        """The ``DenoisingMeta`` of the denoising queries when they ran, else None."""
        part = (self.query_groups or {}).get("dn")
        return None if part is None else part.state


@register_output
@dataclass
class DinoObjectDetectionOutput(DinoModelOutput, DetectionFields):
    """Output of ``DinoForObjectDetection``: ``DetectionFields`` (loss, loss_dict, logits
    ``[B, Q, K]``, pred_boxes ``[B, Q, 4]``, auxiliary_outputs, group_outputs; first) and the
    ``DinoModelOutput`` fields. ``dn_outputs`` reads ``group_outputs["dn"]``: ``{"logits",
    "pred_boxes", "auxiliary_outputs"}`` of the denoising queries, in training with labels."""

    @property
    def dn_outputs(self) -> dict[str, Any] | None:
        return (self.group_outputs or {}).get("dn")
