"""Output containers shared by the model families: mapping-style access, tuples, pytree registration.

Fields are read as attributes (``out.logits``) or keys (``out["logits"]``); ``to_tuple()`` gives
the fields that are set, in order. ``register_output`` makes a class a pytree node so that
``torch.export`` and the ONNX exporter can return it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree


class OutputMixin:
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

    def all_fields(self) -> dict[str, Any]:
        """Every field, None included, by name (no copies: unlike ``dataclasses.asdict``)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def to_tuple(self) -> tuple[Any, ...]:
        """The set (non-None) fields, in declaration order."""
        return tuple(self.values())


@dataclass
class TransformerFields(OutputMixin):
    """The fields every deformable transformer's output has, in ``transformers``' order (a family's
    model output subclasses it and may append its own; shapes in ``DeformableDetrModelOutput``)."""

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
    # not in transformers: {group name: GroupDecoderOutput} of the training-time query groups that ran
    query_groups: dict[str, Any] | None = None


@dataclass
class DetectionFields:
    """The fields a detector adds to its transformer's output, first in the output's order (as in
    ``transformers``): a detection output class lists its model output class *before* this one
    among its bases, so that these come first.

    - loss (scalar) and loss_dict (``{"loss_ce", "loss_bbox", "loss_giou", "cardinality_error", ...}``): with labels.
    - logits ``[B, Q, num_labels]`` (sigmoid scores, no "no object" column).
    - pred_boxes ``[B, Q, 4]`` normalized (cx, cy, w, h).
    - auxiliary_outputs: ``[{"logits", "pred_boxes"}, ...]`` of the earlier decoder layers, with
      labels and auxiliary losses.
    - group_outputs (not in ``transformers``; set only in training when query groups ran):
      ``{name: {"logits", "pred_boxes", "auxiliary_outputs"}}`` of each group's queries.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    group_outputs: dict[str, dict[str, Any]] | None = None


def resolve_output_flags(
    config: Any, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
) -> tuple[bool, bool, bool]:
    """The call's output switches, each None one taken from ``config`` (its ``output_attentions``,
    ``output_hidden_states``, ``use_return_dict``; defaults False, False, True), as in ``transformers``."""
    if output_attentions is None:
        output_attentions = bool(getattr(config, "output_attentions", False))
    if output_hidden_states is None:
        output_hidden_states = bool(getattr(config, "output_hidden_states", False))
    if return_dict is None:
        return_dict = bool(getattr(config, "use_return_dict", getattr(config, "return_dict", True)))
    for name, value in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states), ("return_dict", return_dict)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool or None, got {value!r}")
    return output_attentions, output_hidden_states, return_dict


def register_output(cls: type) -> type:
    """Register a output dataclass as a pytree node; returns ``cls`` (usable as a decorator)."""
    names = [field.name for field in dataclasses.fields(cls)]

    def flatten(output):
        return [getattr(output, name) for name in names], names

    def unflatten(values, context):
        return cls(**dict(zip(context, values)))

    def flatten_with_keys(output):
        return [(pytree.GetAttrKey(name), getattr(output, name)) for name in names], names

    pytree.register_pytree_node(cls, flatten, unflatten, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}", flatten_with_keys_fn=flatten_with_keys)
    return cls
