"""Output objects of the Deformable DETR models, with the Hugging Face field names and order.

See ``models.common.outputs`` for how they are read (attributes, keys, ``to_tuple()``).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.common.outputs import DetectionFields, TransformerFields, register_output


@register_output
@dataclass
class DeformableDetrModelOutput(TransformerFields):
    """Output of ``DeformableDetrModel``.

    Shapes: B batch, Q queries, C d_model, S encoder tokens (all levels), D decoder layers.

    - init_reference_points ``[B, Q, 2]`` (or ``[B, Q, 4]`` two-stage): reference points fed to the decoder.
    - last_hidden_state ``[B, Q, C]``: last decoder layer.
    - intermediate_hidden_states ``[B, D, Q, C]``; intermediate_reference_points ``[B, D, Q, 2 or 4]``.
    - decoder_hidden_states / encoder_hidden_states: tuples of layer inputs + final output, when asked.
    - decoder_attentions / cross_attentions / encoder_attentions: per-layer attention weights, when asked.
    - encoder_last_hidden_state ``[B, S, C]``.
    - enc_outputs_class ``[B, S, num_labels]``, enc_outputs_coord_logits ``[B, S, 4]``: two-stage only.
    """


@register_output
@dataclass
class DeformableDetrObjectDetectionOutput(DeformableDetrModelOutput, DetectionFields):
    """Output of ``DeformableDetrForObjectDetection``: ``DetectionFields`` (loss, loss_dict, logits,
    pred_boxes, auxiliary_outputs; first) followed by the ``DeformableDetrModelOutput`` fields."""
