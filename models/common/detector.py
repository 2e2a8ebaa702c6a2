"""The generic query-group detector: a deformable transformer with class and box heads on every
decoder layer, its criterion, and its training-time query groups.

    pixels ─ transformer (matching queries + active groups' queries) ─ heads on every layer
           ─ matching predictions (``logits``, ``pred_boxes``, ``auxiliary_outputs``)
           ─ each group's predictions (``group_outputs[name]``)
           ─ loss = criterion(matching + proposals) + Σ group.loss(...)

A family (Deformable DETR, DINO, a user's) is a builder: it makes the modules from its config
and passes them in; the forward, the loss and the checkpoint handling are written once, here and
in ``models.common.pretrained_model``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.common.deformable_transformer import DeformableTransformerModel
from models.common.outputs import resolve_output_flags
from models.common.predictions import layer_predictions, prediction_dict, targets_on


class QueryGroupDetector(nn.Module):
    """Deformable transformer + per-layer heads + criterion + query groups.

    Args (keyword only):
        config: the family's config (``auxiliary_loss``, ``output_*`` switches are read).
        model: the transformer (its ``query_groups`` are the training-time groups).
        class_embed: one class head per decoder layer (possibly the same module repeated).
        bbox_embed: one box head per decoder layer (possibly the same module repeated).
        criterion: a ``detr_blocks.SetCriterion`` (or subclass) for the matching queries; groups
            are handed it for their own terms.
        box_eps: ``inverse_sigmoid``'s clamp when boxes are refined against references.
        output_class: the detection output dataclass (``DetectionFields`` first, then the model's).

    Submodules: ``model``, ``class_embed``, ``bbox_embed``, ``criterion``.
    """

    main_input_name = "pixel_values"
    # the model's output field holding the first decoder layer's (normalized) reference points
    initial_reference_field = "init_reference_points"

    def __init__(
        self,
        *,
        config: Any,
        model: DeformableTransformerModel,
        class_embed: nn.ModuleList,
        bbox_embed: nn.ModuleList,
        criterion: nn.Module,
        box_eps: float,
        output_class: type,
    ) -> None:
        super().__init__()
        if not isinstance(model, DeformableTransformerModel):
            raise TypeError(f"model must be a DeformableTransformerModel, got {type(model).__name__}")
        if len(class_embed) < len(model.decoder.layers) or len(bbox_embed) < len(model.decoder.layers):
            raise ValueError(f"class_embed and bbox_embed need one head per decoder layer ({len(model.decoder.layers)}), got {len(class_embed)} and {len(bbox_embed)}")
        self.config = config
        self.model = model
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.criterion = criterion
        self.box_eps = box_eps
        self.output_class = output_class

    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        self.model.freeze_backbone()

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter."""
        self.model.unfreeze_backbone()

    # ----------------------------------------------------------------------------- forward
    def predictions(self, hidden: torch.Tensor, initial: torch.Tensor, refined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[D, B, N, K]`` and boxes ``[D, B, N, 4]`` of every decoder layer, from
        ``hidden`` ``[B, D, N, C]``, the first layer's references ``initial`` ``[B, N, 2|4]`` and every
        layer's recorded references ``refined`` ``[B, D, N, 2|4]``."""
        return layer_predictions(self.class_embed, self.bbox_embed, hidden, initial, refined, self.box_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        """Args:
            pixel_values: ``[B, C, H, W]`` normalized images; pixel_mask: ``[B, H, W]`` (1 = real pixel).
            labels: per image ``{"class_labels": int64 [N], "boxes": [N, 4] normalized cx, cy, w, h}``;
                when given, ``loss`` and ``loss_dict`` are computed, and in training the groups
                built from targets (denoising) take part.
            output_attentions, output_hidden_states, return_dict: None reads the config's value.

        Returns:
            ``output_class``: ``logits`` ``[B, Q, K]`` and ``pred_boxes`` ``[B, Q, 4]`` of the matching
            queries, the model's fields, ``loss``/``loss_dict``/``auxiliary_outputs`` with labels,
            and in training ``group_outputs`` (``{name: {"logits", "pred_boxes",
            "auxiliary_outputs"}}`` of each group that ran); with ``return_dict=False`` its ``to_tuple()``.
        """
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        targets = None if labels is None else targets_on(labels, pixel_values.shape[0], pixel_values.device)
        fields = self.model.run_steps(pixel_values, pixel_mask, output_hidden_states, targets=targets, output_attentions=output_attentions)
        classes, boxes = self.predictions(fields["intermediate_hidden_states"], fields[self.initial_reference_field], fields["intermediate_reference_points"])
        group_outputs = {
            name: prediction_dict(*self.predictions(part.hidden_states, part.init_reference_points, part.intermediate_reference_points), auxiliary=True)
            for name, part in (fields.get("query_groups") or {}).items()
        }
        loss = loss_dict = auxiliary_outputs = None
        if targets is not None:
            loss, loss_dict, auxiliary_outputs = self.compute_loss(classes, boxes, targets, fields, group_outputs)
        output = self.output_class(
            loss=loss, loss_dict=loss_dict, logits=classes[-1], pred_boxes=boxes[-1], auxiliary_outputs=auxiliary_outputs,
            group_outputs=group_outputs or None, **self.detection_fields(fields, classes, boxes),
        )
        return output if return_dict else output.to_tuple()

    def detection_fields(self, fields: dict[str, Any], classes: torch.Tensor, boxes: torch.Tensor) -> dict[str, Any]:
        """The model's output fields as the detection output carries them (default: unchanged); a
        family whose output also reports per-layer predictions (``classes`` ``[D, B, Q, K]``,
        ``boxes`` ``[D, B, Q, 4]``) adds them here."""
        return fields

    # ------------------------------------------------------------------------------- loss
    def proposal_predictions(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The query selection's proposals as the criterion supervises them: two-stage
        ``enc_outputs`` (every token, class-agnostic) when the selection made proposals. A family
        whose loss reads other proposal outputs overrides this one step."""
        if fields.get("enc_outputs_class") is None:
            return {}
        return {"enc_outputs": {"logits": fields["enc_outputs_class"], "pred_boxes": fields["enc_outputs_coord_logits"].sigmoid()}}

    def compute_loss(
        self,
        classes: torch.Tensor,
        boxes: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
        fields: dict[str, Any],
        group_outputs: dict[str, dict[str, Any]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        """``(loss, loss_dict, auxiliary_outputs)``: the criterion on the matching queries (final
        layer, ``_<i>`` auxiliary layers when ``config.auxiliary_loss``, proposals), plus every group
        that ran, each adding its terms under its own name and its weighted total.

        Args:
            classes: ``[D, B, Q, K]`` and boxes ``[D, B, Q, 4]``: the matching queries' predictions.
            targets: per image ``{"class_labels", "boxes"}`` on the model's device.
            fields: the model's output fields (``query_groups`` holds each group's state).
            group_outputs: each group's predictions (``prediction_dict`` with auxiliary layers).
        """
        auxiliary = bool(self.config.auxiliary_loss)
        predictions = prediction_dict(classes, boxes, auxiliary)
        predictions.update(self.proposal_predictions(fields))
        loss, loss_dict = self.criterion(predictions, targets)
        for group in self.model.query_groups:
            if group.name not in group_outputs:
                continue
            own = group_outputs[group.name] if auxiliary else {k: v for k, v in group_outputs[group.name].items() if k != "auxiliary_outputs"}
            part = group.loss(self.criterion, own, targets, fields["query_groups"][group.name].state)
            loss = loss + part.total
            loss_dict.update(part.terms)
        return loss, loss_dict, predictions.get("auxiliary_outputs")
