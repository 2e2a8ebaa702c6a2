"""Output objects of the RT-DETR models: ``transformers``' ``RTDetrModelOutput`` and
``RTDetrObjectDetectionOutput`` field names, in their order.

See ``models.common.outputs`` for how they are read (attributes, keys, ``to_tuple()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.common.outputs import DetectionFields, OutputMixin, register_output


@register_output
@dataclass
class RTDetrModelOutput(OutputMixin):
    """Output of ``RTDetrModel`` (B batch, Q matching queries, C d_model, S tokens of the decoder's
    input levels, D decoder layers, K classes). Outside training, or without denoising, the query
    fields hold the Q matching queries (in training ``transformers`` also puts the denoising
    queries in front of them; here they are in ``query_groups["dn"]``).

    - last_hidden_state ``[B, Q, C]``; intermediate_hidden_states ``[B, D, Q, C]``.
    - intermediate_logits ``[B, D, Q, K]``: every layer's class logits (with heads).
    - intermediate_reference_points ``[B, D, Q, 4]``: every layer's refined boxes (not detached).
    - intermediate_predicted_corners: always None (D-FINE's field in ``transformers``).
    - initial_reference_points ``[B, Q, 4]``: the decoder's first boxes (sigmoid of
      ``init_reference_points``).
    - decoder_hidden_states / encoder_hidden_states: the decoder layers' inputs and outputs; the
      hybrid encoder's input maps and its outputs, when asked.
    - decoder_attentions / cross_attentions: per-layer attention weights, when asked.
    - encoder_last_hidden_state: the hybrid encoder's output maps, ``[B, encoder_hidden_dim, H_l, W_l]``
      per level (a list, as ``transformers``).
    - init_reference_points ``[B, Q, 4]``: the selected proposals' box logits (detached).
    - enc_topk_logits ``[B, Q, K]``, enc_topk_bboxes ``[B, Q, 4]``: the selected proposals (boxes
      with their graph).
    - enc_outputs_class ``[B, S, K]``, enc_outputs_coord_logits ``[B, S, 4]``: every token's proposal.
    - denoising_meta_values: in training with denoising, ``{"dn_num_group", "dn_num_split"}`` as
      ``transformers`` (its ``dn_positive_idx`` is ``detr_blocks.denoising_matching_indices``).
    - query_groups (not in ``transformers``): ``{"dn": GroupDecoderOutput}`` in training.
    """

    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_logits: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    intermediate_predicted_corners: torch.Tensor | None = None
    initial_reference_points: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: list[torch.Tensor] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    init_reference_points: torch.Tensor | None = None
    enc_topk_logits: torch.Tensor | None = None
    enc_topk_bboxes: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None
    denoising_meta_values: dict[str, Any] | None = None
    query_groups: dict[str, Any] | None = None


@register_output
@dataclass
class RTDetrObjectDetectionOutput(RTDetrModelOutput, DetectionFields):
    """Output of ``RTDetrForObjectDetection``: ``DetectionFields`` first (loss, loss_dict, logits
    ``[B, Q, K]``, pred_boxes ``[B, Q, 4]`` normalized cx, cy, w, h, auxiliary_outputs,
    group_outputs), then the ``RTDetrModelOutput`` fields. ``loss_dict`` holds every term
    unweighted (``transformers`` reports them weighted); ``loss`` is the weighted sum.
    ``dn_outputs`` reads ``group_outputs["dn"]``."""

    @property
    def dn_outputs(self) -> dict[str, Any] | None:
        return (self.group_outputs or {}).get("dn")
