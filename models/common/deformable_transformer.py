"""The deformable transformer every family assembles: named, overridable steps over injected modules.

    pixels ─ multi_scale_features ─ encode ─ select_queries ─ decode ─> the family's output

A family builds the modules (backbone, projections, encoder, query selection, decoder) from its
config and passes them in; a variant overrides one step or injects another module, and copies
nothing. The query selection module's parameters are stored at the model's level in state dicts
(``model.enc_output.weight``, not ``model.query_selection.enc_output.weight``), so checkpoints keep
the layout of ``transformers`` and of the original code.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from detr_blocks.decoder import DeformableDecoder, DeformableDecoderOutput
from detr_blocks.encoder import DeformableEncoder, DeformableEncoderOutput
from models.backbones import BackboneWithPositions
from models.common.attentions import record_attentions
from models.common.layers import encoder_stack
from models.common.multi_scale import MultiScaleFeatures, check_pixels, input_projections, multi_scale_features
from models.common.outputs import resolve_output_flags
from models.common.query_groups import MATCHING, GroupQueries, QueryBlock, QueryGroup, QueryLayout, check_groups, self_attention_mask

QUERY_SELECTION = "query_selection"
QUERY_GROUPS = "query_groups"


class SelectedQueries(NamedTuple):
    """What a query selection module returns (Q decoder queries).

    target ``[B, Q, C]`` content queries; reference_points ``[B, Q, 2]`` points or ``[B, Q, 4]`` boxes
    (normalized, relative to the unpadded image); query_position ``[B, Q, C]`` or None (the decoder's
    policy computes positions); enc_outputs_class ``[B, S, K]`` and enc_outputs_coord_logits
    ``[B, S, 4]``: the encoder proposals when the selection makes them; self_attn_mask: the
    decoder's self-attention mask among these queries (True = may not attend) or None;
    proposal_logits ``[B, Q, K]`` and proposal_boxes ``[B, Q, 4]`` (normalized, with their graph):
    the selected proposals as the proposal heads scored them, when a loss supervises them;
    reference_logits ``[B, Q, 4]``: the reference boxes as the logits they were selected as, when
    the selection has them (a model that reports them uses them rather than re-deriving them).
    """

    target: torch.Tensor
    reference_points: torch.Tensor
    query_position: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None
    self_attn_mask: torch.Tensor | None = None
    proposal_logits: torch.Tensor | None = None
    proposal_boxes: torch.Tensor | None = None
    reference_logits: torch.Tensor | None = None

    def rows(self, start: int, size: int) -> "SelectedQueries":
        """Queries ``start .. start + size`` (the per-token encoder proposals are kept whole)."""

        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.narrow(1, start, size)

        mask = None if self.self_attn_mask is None else self.self_attn_mask[start : start + size, start : start + size]
        return self._replace(
            target=cut(self.target), reference_points=cut(self.reference_points), query_position=cut(self.query_position),
            self_attn_mask=mask, proposal_logits=cut(self.proposal_logits), proposal_boxes=cut(self.proposal_boxes),
            reference_logits=cut(self.reference_logits),
        )


class GroupDecoderOutput(NamedTuple):
    """A query group's slice of the decoder outputs: hidden_states ``[B, D, N, C]``,
    init_reference_points ``[B, N, 2|4]``, intermediate_reference_points ``[B, D, N, 2|4]``, and the
    group's ``state`` (handed to its loss)."""

    hidden_states: torch.Tensor
    init_reference_points: torch.Tensor
    intermediate_reference_points: torch.Tensor
    state: Any = None


def _stored_submodules(module: nn.Module) -> list[str]:
    """Prefixes whose parameters are stored at the model's level: the query selection, the groups."""
    return [QUERY_SELECTION] + [f"{QUERY_GROUPS}.{index}" for index in range(len(getattr(module, QUERY_GROUPS)))]


def _flatten_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for inner in (f"{prefix}{name}." for name in _stored_submodules(module)):
        for key in [key for key in state_dict if key.startswith(inner)]:
            state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _nest_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for inner in _stored_submodules(module):
        for name in module.get_submodule(inner).state_dict(keep_vars=True):
            if prefix + name in state_dict:
                state_dict[f"{prefix}{inner}.{name}"] = state_dict.pop(prefix + name)


class DeformableTransformerModel(nn.Module):
    """Backbone + deformable encoder + query selection + deformable decoder, without heads.

    Args (keyword only):
        backbone: feature maps with masks and position embeddings.
        input_proj: one projection per level (``models.common.multi_scale.input_projections``);
            None for a family whose own ``multi_scale_features`` step projects (RT-DETR).
        level_embed: ``[L, C]`` parameter added to the positions of each level; None likewise.
        encoder: the encoder stack.
        query_selection: called as ``query_selection(memory [B, S, C], features, proposal_heads)``
            → ``SelectedQueries``; ``proposal_heads`` is ``self.proposal_heads()``.
        decoder: the decoder stack.
        num_channels: input image channels (validated in ``forward``).
        output_class: the output dataclass ``forward`` returns (fields as ``DeformableDetrModelOutput``).
        groups: training-time query groups (``models.common.query_groups``) next to the matching
            queries; the standard output fields always hold the matching queries only.

    Submodules: ``backbone``, ``input_proj``, ``level_embed``, ``encoder``, ``query_selection``
    and ``query_groups`` (state-dict keys without those prefixes), ``decoder``.
    """

    def __init__(
        self,
        *,
        backbone: BackboneWithPositions,
        input_proj: nn.ModuleList | None,
        level_embed: nn.Parameter | None,
        encoder: DeformableEncoder,
        query_selection: nn.Module,
        decoder: DeformableDecoder,
        num_channels: int,
        output_class: type,
        groups: list[QueryGroup] | None = None,
    ) -> None:
        super().__init__()
        if (input_proj is None) != (level_embed is None):
            raise ValueError("input_proj and level_embed are given together, or both None (the family projects in its own step)")
        if level_embed is not None and (level_embed.dim() != 2 or level_embed.shape[0] != len(input_proj)):
            raise ValueError(f"level_embed must have shape [L={len(input_proj)}, C], got {tuple(level_embed.shape)}")
        self.backbone = backbone
        self.input_proj = input_proj
        self.level_embed = level_embed
        self.encoder = encoder
        self.query_selection = query_selection
        self.decoder = decoder
        self.num_channels = num_channels
        self.output_class = output_class
        self.query_groups = check_groups(groups)
        self.register_state_dict_post_hook(_flatten_state_dict)
        self.register_load_state_dict_pre_hook(_nest_state_dict)

    # ------------------------------------------------------------------------------ backbone
    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        for parameter in self.backbone.conv_encoder.model.parameters():
            parameter.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter (including the stem and layer1, frozen by default)."""
        for parameter in self.backbone.conv_encoder.model.parameters():
            parameter.requires_grad_(True)

    # --------------------------------------------------------------------------------- steps
    def multi_scale_features(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> MultiScaleFeatures:
        """Step 1: backbone, projections, extra levels, flattened (see ``MultiScaleFeatures``)."""
        return multi_scale_features(self.backbone, self.input_proj, self.level_embed, pixel_values, pixel_mask)

    def encode(self, features: MultiScaleFeatures, output_hidden_states: bool = False) -> DeformableEncoderOutput:
        """Step 2: the encoder over all tokens of all levels → ``last_hidden_state [B, S, C]``."""
        return self.encoder(
            features.source,
            features.spatial_shapes,
            features.level_start_index,
            features.valid_ratios,
            features.position,
            features.padding_mask,
            output_hidden_states=output_hidden_states,
            spatial_shapes_list=features.spatial_shapes_list,
        )

    def proposal_heads(self) -> tuple[nn.Module, nn.Module] | None:
        """(class head, box head) that score encoder proposals: the decoder's extra last heads when it
        holds them (two-stage layout), else None."""
        decoder = self.decoder
        if decoder.class_embed is None or decoder.bbox_embed is None or len(decoder.bbox_embed) <= len(decoder.layers):
            return None
        return decoder.class_embed[-1], decoder.bbox_embed[-1]

    def select_queries(
        self, memory: torch.Tensor, features: MultiScaleFeatures, targets: list[dict[str, torch.Tensor]] | None = None
    ) -> tuple[SelectedQueries, QueryLayout]:
        """Step 3: the decoder's queries and reference points (learned, or from encoder proposals),
        with the active query groups' blocks around the matching ones (``targets``: training labels,
        for groups built from them) and the layout that cuts them apart again."""
        selected = self.query_selection(memory, features, self.proposal_heads())
        num_matching = selected.target.shape[1] - sum(group.selected for group in self.query_groups)
        if num_matching < 1:
            raise ValueError(
                f"the query selection gave {selected.target.shape[1]} queries, but the groups take "
                f"{selected.target.shape[1] - num_matching} of them: none is left for matching"
            )
        matching = selected.rows(0, num_matching)
        made: list[tuple[QueryGroup, GroupQueries]] = []
        offset = num_matching
        for group in self.query_groups:
            rows = selected.rows(offset, group.selected) if group.selected else None
            offset += group.selected
            if group.active(self.training, targets):
                queries = group.queries(rows, targets)
                if queries is not None:
                    made.append((group, queries))
        if not made:
            return matching, QueryLayout((QueryBlock(MATCHING, 0, num_matching),))
        return _compose(matching, made)

    def decode(
        self, queries: SelectedQueries, memory: torch.Tensor, features: MultiScaleFeatures, output_hidden_states: bool = False
    ) -> DeformableDecoderOutput:
        """Step 4: the decoder stack over the selected queries."""
        return self.decoder(
            queries.target,
            queries.reference_points,
            memory,
            features.spatial_shapes,
            features.level_start_index,
            features.valid_ratios,
            queries.query_position,
            features.padding_mask,
            self_attn_mask=queries.self_attn_mask,
            output_hidden_states=output_hidden_states,
        )

    def run_steps(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        targets: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool = False,
    ) -> dict[str, Any]:
        """All steps in order; returns ``output_fields`` (the fields of ``output_class``), plus
        ``encoder_attentions``, ``decoder_attentions`` and ``cross_attentions`` when
        ``output_attentions`` (recorded with hooks that exist only during this call)."""
        pixel_mask = check_pixels(pixel_values, pixel_mask, self.num_channels)
        if not output_attentions:
            return self._steps(pixel_values, pixel_mask, output_hidden_states, targets)
        with record_attentions(self.encoder_attention_layers(), self.decoder.layers) as recorded:
            fields = self._steps(pixel_values, pixel_mask, output_hidden_states, targets)
        fields.update(encoder_attentions=tuple(recorded.encoder), decoder_attentions=tuple(recorded.decoder_self), cross_attentions=tuple(recorded.cross))
        return fields

    def encoder_attention_layers(self) -> nn.ModuleList:
        """The encoder layers whose deformable attention ``output_attentions`` records."""
        return self.encoder.layers

    def _steps(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, output_hidden_states: bool, targets: list[dict[str, torch.Tensor]] | None) -> dict[str, Any]:
        features = self.multi_scale_features(pixel_values, pixel_mask)
        encoded = self.encode(features, output_hidden_states)
        queries, layout = self.select_queries(encoded.last_hidden_state, features, targets)
        decoded = self.decode(queries, encoded.last_hidden_state, features, output_hidden_states)
        return self.output_fields(features, encoded, queries, decoded, layout)

    def output_fields(
        self, features: MultiScaleFeatures, encoded: DeformableEncoderOutput, queries: SelectedQueries, decoded: DeformableDecoderOutput, layout: QueryLayout
    ) -> dict[str, Any]:
        """Step 5: the output fields by name (a family adds its own by overriding this): the
        matching queries' slices, and ``query_groups`` (``{name: GroupDecoderOutput}``) when groups ran."""
        fields = {
            "init_reference_points": layout.take(queries.reference_points, MATCHING, 1),
            "intermediate_hidden_states": layout.take(decoded.intermediate_hidden_states, MATCHING, 2),
            "intermediate_reference_points": layout.take(decoded.intermediate_reference_points, MATCHING, 2),
            "decoder_hidden_states": None if decoded.hidden_states is None else tuple(layout.take(h, MATCHING, 1) for h in decoded.hidden_states),
            "encoder_last_hidden_state": encoded.last_hidden_state,
            "encoder_hidden_states": encoded.hidden_states,
            "enc_outputs_class": queries.enc_outputs_class,
            "enc_outputs_coord_logits": queries.enc_outputs_coord_logits,
        }
        fields["last_hidden_state"] = decoded.last_hidden_state if layout.is_plain else fields["intermediate_hidden_states"][:, -1]
        if not layout.is_plain:
            fields["query_groups"] = {
                block.name: GroupDecoderOutput(
                    layout.take(decoded.intermediate_hidden_states, block.name, 2),
                    layout.take(queries.reference_points, block.name, 1),
                    layout.take(decoded.intermediate_reference_points, block.name, 2),
                    block.state,
                )
                for block in layout.blocks
                if block.name != MATCHING
            }
        return fields

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
            pixel_values: ``[B, C, H, W]`` normalized images (padded to one size).
            pixel_mask: ``[B, H, W]``, 1 on real pixels and 0 on padding; None = no padding.
            labels: training targets (``{"class_labels", "boxes"}`` per image), for query groups
                built from them (denoising, in training); unused otherwise. Keyword use is
                recommended: ``transformers``' bare model has other arguments in this position.
            output_hidden_states: also return every encoder and decoder layer's input/output.
            output_attentions: also return the attention weights of every layer:
                ``encoder_attentions`` ``[B, S, M, L, P]``, ``decoder_attentions`` ``[B, M, Q, Q]``
                (self-attention), ``cross_attentions`` ``[B, Q, M, L, P]`` (M heads, L levels,
                P points). Recorded with hooks only when asked.
            return_dict: False returns ``to_tuple()`` of the output (the fields that are set, in order).
            Each switch left None is read from ``self.config`` when the model has one.

        Returns:
            ``output_class`` with ``init_reference_points``, ``last_hidden_state``,
            ``intermediate_hidden_states``, ``intermediate_reference_points``,
            ``decoder_hidden_states``, ``decoder_attentions``, ``cross_attentions``,
            ``encoder_last_hidden_state``, ``encoder_hidden_states``, ``encoder_attentions``,
            ``enc_outputs_class``, ``enc_outputs_coord_logits`` (or their tuple).
        """
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            getattr(self, "config", None), output_attentions, output_hidden_states, return_dict
        )
        output = self.output_class(**self.run_steps(pixel_values, pixel_mask, output_hidden_states, labels, output_attentions))
        return output if return_dict else output.to_tuple()


def standard_parts(config: Any, backbone: BackboneWithPositions) -> dict[str, Any]:
    """The constructor arguments every family builds the same way from its config: ``input_proj``
    (one projection per level), ``level_embed`` ``[L, C]`` (normal init), ``encoder`` and
    ``num_channels``."""
    level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
    nn.init.normal_(level_embed)
    return {
        "input_proj": input_projections(backbone.conv_encoder.intermediate_channel_sizes, config.d_model, config.num_feature_levels),
        "level_embed": level_embed,
        "encoder": encoder_stack(config),
        "num_channels": config.num_channels,
    }


def _compose(matching: SelectedQueries, made: list[tuple[QueryGroup, GroupQueries]]) -> tuple[SelectedQueries, QueryLayout]:
    """The matching queries and the groups' queries in one block order, with the self-attention
    mask that keeps them apart (``models.common.query_groups``)."""
    ordered: list[tuple[str, GroupQueries]] = [(g.name, q) for g, q in made if g.placement == "before"]
    ordered.append((MATCHING, GroupQueries(matching.target, matching.reference_points, matching.query_position, matching.self_attn_mask)))
    ordered += [(g.name, q) for g, q in made if g.placement == "after"]
    has_position = matching.query_position is not None
    blocks, start = [], 0
    for name, queries in ordered:
        if (queries.query_position is not None) != has_position:
            raise ValueError(f"query group {name!r} must give query_position exactly when the matching queries do ({has_position})")
        if queries.reference_points.shape[-1] != matching.reference_points.shape[-1]:
            raise ValueError(f"query group {name!r} gives {queries.reference_points.shape[-1]}-d reference points; the matching queries use {matching.reference_points.shape[-1]}-d")
        blocks.append(QueryBlock(name, start, queries.target.shape[1], queries.state))
        start += queries.target.shape[1]
    layout = QueryLayout(tuple(blocks))
    dtype = matching.target.dtype
    mask = self_attention_mask(
        layout, {name: q.attention_block for name, q in ordered}, {g.name for g, _ in made if g.sees_matching}, matching.target.device
    )
    combined = matching._replace(
        target=torch.cat([q.target.to(dtype) for _, q in ordered], 1),
        reference_points=torch.cat([q.reference_points.to(matching.reference_points.dtype) for _, q in ordered], 1),
        query_position=torch.cat([q.query_position.to(dtype) for _, q in ordered], 1) if has_position else None,
        self_attn_mask=mask,
    )
    return combined, layout
