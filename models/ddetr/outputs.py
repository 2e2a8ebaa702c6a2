"""Output objects of the Deformable DETR models, with the Hugging Face field names.

Fields are read as attributes (``out.logits``) or keys (``out["logits"]``); ``to_tuple()`` gives
the fields that are set, in order. The classes are registered as pytree nodes so ``torch.export``
and the ONNX exporter can return them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.utils._pytree as pytree


class _OutputMixin:
    """Mapping-style access for the output dataclasses (fields that are None count as absent)."""

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no field {key!r} set (set fields: {self.keys()})")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value

    def to_tuple(self) -> tuple[Any, ...]:
        """The set (non-None) fields, in declaration order."""
        return tuple(self.values())


@dataclass
class DeformableDetrModelOutput(_OutputMixin):
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

    init_reference_points: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None


@dataclass
class DeformableDetrObjectDetectionOutput(_OutputMixin):
    """Output of ``DeformableDetrForObjectDetection``: the model output fields plus

    - loss (scalar) and loss_dict (``{"loss_ce", "loss_bbox", "loss_giou", "cardinality_error", ...}``): with labels.
    - logits ``[B, Q, num_labels]`` (sigmoid scores, no "no object" column).
    - pred_boxes ``[B, Q, 4]`` normalized (cx, cy, w, h).
    - auxiliary_outputs: ``[{"logits", "pred_boxes"}, ...]`` of the earlier decoder layers, with
      labels and ``auxiliary_loss``.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    init_reference_points: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None


def _register(cls: type) -> None:
    names = [field.name for field in dataclasses.fields(cls)]

    def flatten(output):
        return [getattr(output, name) for name in names], names

    def unflatten(values, context):
        return cls(**dict(zip(context, values)))

    def flatten_with_keys(output):
        return [(pytree.GetAttrKey(name), getattr(output, name)) for name in names], names

    pytree.register_pytree_node(cls, flatten, unflatten, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}", flatten_with_keys_fn=flatten_with_keys)


for _cls in (DeformableDetrModelOutput, DeformableDetrObjectDetectionOutput):
    _register(_cls)
