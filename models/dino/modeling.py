"""``DinoModel`` and ``DinoForObjectDetection``: DINO assembled from ``detr_blocks`` and ``msda``.

What is DINO's own here, over the shared ``DeformableTransformerModel`` steps:

- positions: sine with temperature 20 and no half-pixel offset;
- query selection: ``MixedQuerySelection`` (top-k proposals by max class, learned contents);
- the decoder's policies: ``BoxQueryPosition`` (conditional query positions from the current
  boxes), ``LookForwardTwice`` refinement (inverse-sigmoid eps 1e-3), a shared LayerNorm on every
  layer's output;
- contrastive denoising queries in training (``select_queries`` override, ``label_enc``);
- the loss (``DinoCriterion``): matching, auxiliary, intermediate (``_interm``) and denoising
  (``_dn``) terms.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from detr_blocks.decoder import DeformableDecoder, DeformableDecoderOutput
from detr_blocks.denoising import contrastive_denoising_queries, split_denoising_outputs
from detr_blocks.encoder import DeformableEncoderOutput
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.position_embedding import SinePositionEmbedding
from detr_blocks.query_position import BoxQueryPosition
from detr_blocks.refinement import LookForwardTwice
from models.backbones import BackboneWithPositions, ConvEncoder, build_backbone_body
from models.common import checkpoint_files
from models.common.deformable_transformer import DeformableTransformerModel, SelectedQueries
from models.common.hub import PushToHubMixin
from models.common.key_rules import original_num_labels
from models.common.layers import box_head, class_head, decoder_layers, encoder_stack
from models.common.multi_scale import MultiScaleFeatures, input_projections
from models.common.outputs import resolve_output_flags
from models.common.predictions import layer_predictions, prediction_dict, targets_on
from models.common.pretrained import OriginalFormat, TiedStateDictMixin, auto_dtype, place, read_checkpoint, resolve_device, split_loading_kwargs
from models.dino import checkpoints
from models.dino.config import DinoConfig
from models.dino.criterion import DinoCriterion
from models.dino.outputs import DinoModelOutput, DinoObjectDetectionOutput
from models.dino.query_selection import MixedQuerySelection

BOX_EPS = 1e-3  # DINO's inverse_sigmoid clamps at 1e-3 (Deformable DETR: 1e-5)


def _check_config(config: Any) -> DinoConfig:
    if not isinstance(config, DinoConfig):
        raise TypeError(f"config must be a models.DinoConfig, got {type(config).__name__}")
    config.validate()
    return config


def _decoder(config: DinoConfig, bbox_embed: nn.ModuleList) -> DeformableDecoder:
    """DINO's decoder: the shared layers with its three policies."""
    return DeformableDecoder(
        decoder_layers(config),
        bbox_embed=bbox_embed,
        refinement=LookForwardTwice(eps=BOX_EPS),
        query_position=BoxQueryPosition(config.d_model),
        intermediate_norm=nn.LayerNorm(config.d_model),
    )


class DinoModel(DeformableTransformerModel):
    """Backbone + deformable encoder + mixed query selection (+ denoising queries) + DINO's decoder.

    Args:
        config: the ``DinoConfig``.
        bbox_embed: the decoder's box heads (one per layer, possibly the same module), used for
            look-forward-twice refinement; given by ``DinoForObjectDetection``.
        enc_class_head, enc_box_head: the heads that score the encoder proposals.
        backbone_body: another backbone network (e.g. a narrower ResNet) instead of the config's;
            it must return a list of maps and carry ``channels``.
        query_selection: another query selection module.

    Submodules: ``backbone``, ``input_proj``, ``level_embed``, ``encoder``, ``decoder``
    (``query_position``, ``intermediate_norm``, ``bbox_embed``), ``label_enc``, and the query
    selection's ``enc_output``, ``enc_output_norm``, ``enc_out_class_embed``,
    ``enc_out_bbox_embed``, ``tgt_embed`` (stored at the model's level).
    """

    def __init__(
        self,
        config: DinoConfig,
        bbox_embed: nn.ModuleList,
        enc_class_head: nn.Module,
        enc_box_head: nn.Module,
        *,
        backbone_body: nn.Module | None = None,
        query_selection: nn.Module | None = None,
    ) -> None:
        config = _check_config(config)
        if len(bbox_embed) != config.decoder_layers:
            raise ValueError(f"bbox_embed must hold decoder_layers = {config.decoder_layers} heads, got {len(bbox_embed)}")
        body = build_backbone_body(config) if backbone_body is None else backbone_body
        positions = SinePositionEmbedding(config.d_model // 2, temperature=config.position_embedding_temperature, normalize=True, offset=0.0)
        backbone = BackboneWithPositions(ConvEncoder(body), positions)
        encoder = encoder_stack(config)
        decoder = _decoder(config, bbox_embed)
        level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
        nn.init.normal_(level_embed)
        super().__init__(
            backbone=backbone,
            input_proj=input_projections(backbone.conv_encoder.intermediate_channel_sizes, config.d_model, config.num_feature_levels),
            level_embed=level_embed,
            encoder=encoder,
            query_selection=query_selection or MixedQuerySelection(config.num_queries, config.d_model, enc_class_head, enc_box_head),
            decoder=decoder,
            num_channels=config.num_channels,
            output_class=DinoModelOutput,
        )
        self.config = config
        self.label_enc = nn.Embedding(config.label_book_size + 1, config.d_model)

    def select_queries(self, memory: torch.Tensor, features: MultiScaleFeatures, targets: list[dict[str, torch.Tensor]] | None = None) -> SelectedQueries:
        """The matching queries, preceded in training (with targets and ``dn_number > 0``) by the
        contrastive denoising queries, with the self-attention mask that keeps them apart."""
        queries = super().select_queries(memory, features, targets)
        if targets is None or not self.training or self.config.dn_number == 0:
            return queries
        denoising = contrastive_denoising_queries(
            targets,
            self.config.num_labels,
            self.label_enc,
            queries.target.shape[1],
            dn_number=self.config.dn_number,
            label_noise_ratio=self.config.dn_label_noise_ratio,
            box_noise_scale=self.config.dn_box_noise_scale,
            eps=BOX_EPS,
        )
        return queries._replace(
            target=torch.cat([denoising.content.to(queries.target.dtype), queries.target], 1),
            reference_points=torch.cat([denoising.box_logits.sigmoid().to(queries.reference_points.dtype), queries.reference_points], 1),
            self_attn_mask=denoising.attn_mask,
            extras={**(queries.extras or {}), "denoising_meta": denoising.meta},
        )

    def output_fields(
        self, features: MultiScaleFeatures, encoded: DeformableEncoderOutput, queries: SelectedQueries, decoded: DeformableDecoderOutput
    ) -> dict[str, Any]:
        """The shared fields plus the selected proposals; with denoising, the denoising part of the
        decoder's outputs goes to the ``dn_*`` fields and the rest holds the matching queries only."""
        fields = super().output_fields(features, encoded, queries, decoded)
        extras = dict(queries.extras or {})
        meta = extras.pop("denoising_meta", None)
        fields.update(extras)
        if meta is not None:
            fields["denoising_meta"] = meta
            fields["dn_init_reference_points"], fields["init_reference_points"] = split_denoising_outputs(queries.reference_points, meta)
            fields["dn_hidden_states"], fields["intermediate_hidden_states"] = split_denoising_outputs(decoded.intermediate_hidden_states, meta, dim=2)
            fields["dn_reference_points"], fields["intermediate_reference_points"] = split_denoising_outputs(decoded.intermediate_reference_points, meta, dim=2)
            fields["last_hidden_state"] = fields["intermediate_hidden_states"][:, -1]
        return fields

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DinoModelOutput | tuple:
        """As ``DeformableTransformerModel.forward``; ``labels`` (training only) add denoising queries."""
        return self.forward_with_targets(pixel_values, pixel_mask, output_attentions, output_hidden_states, return_dict, targets=labels)


def _heads(first: nn.Module, count: int, shared: bool) -> nn.ModuleList:
    return nn.ModuleList([first] * count if shared else [first] + [copy.deepcopy(first) for _ in range(count - 1)])


class DinoForObjectDetection(PushToHubMixin, TiedStateDictMixin, nn.Module):
    """DINO with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` / ``bbox_embed`` hold one head per decoder layer: the same module when
    ``dec_pred_*_embed_share`` (the authors' default), else one each. The encoder-proposal heads are
    the decoder's first ones with ``two_stage_*_embed_share``, else copies of their own.
    ``state_dict()`` lists each shared tensor once (``TiedStateDictMixin``), so ``transformers.Trainer``
    can save it with safetensors.

    Args:
        config: the ``DinoConfig``.
        backbone_body: another backbone network (see ``DinoModel``).
    """

    main_input_name = "pixel_values"

    def __init__(self, config: DinoConfig, *, backbone_body: nn.Module | None = None) -> None:
        super().__init__()
        self.config = _check_config(config)
        first_class, first_box = class_head(config), box_head(config)
        self.class_embed = _heads(first_class, config.decoder_layers, config.dec_pred_class_embed_share)
        self.bbox_embed = _heads(first_box, config.decoder_layers, config.dec_pred_bbox_embed_share)
        enc_class = first_class if config.two_stage_class_embed_share else copy.deepcopy(first_class)
        enc_box = first_box if config.two_stage_bbox_embed_share else copy.deepcopy(first_box)
        self.model = DinoModel(config, self.bbox_embed, enc_class, enc_box, backbone_body=backbone_body)
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost, focal_alpha=config.focal_alpha)
        self.criterion = DinoCriterion(config, matcher)

    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        self.model.freeze_backbone()

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter."""
        self.model.unfreeze_backbone()

    # ----------------------------------------------------------------------------- forward
    def predictions(self, hidden: torch.Tensor, initial: torch.Tensor, refined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[D, B, Q, K]`` and boxes ``[D, B, Q, 4]`` of every decoder layer.

        Args:
            hidden: ``[B, D, Q, C]`` every layer's normed output.
            initial: ``[B, Q, 4]`` the first layer's reference boxes.
            refined: ``[B, D, Q, 4]`` every layer's refined boxes (not detached): layer l's box is
                predicted relative to layer l - 1's refined box ("look forward twice").
        """
        return layer_predictions(self.class_embed, self.bbox_embed, hidden, initial, refined, BOX_EPS)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DinoObjectDetectionOutput | tuple:
        """Args:
            pixel_values: ``[B, C, H, W]`` normalized images; pixel_mask: ``[B, H, W]`` (1 = real pixel).
            labels: per image ``{"class_labels": int64 [N], "boxes": [N, 4] normalized cx, cy, w, h}``;
                when given, ``loss`` and ``loss_dict`` are computed, and in training the denoising
                queries are added (``config.dn_number > 0``).
            output_attentions, output_hidden_states, return_dict: as ``DeformableDetrForObjectDetection``
                (None: from the config, default False, False, True).

        Returns:
            ``DinoObjectDetectionOutput``: ``logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]``, the
            model's fields, and in training with labels ``dn_outputs``; with ``return_dict=False`` its
            ``to_tuple()``.
        """
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        fields = self.model.run_steps(pixel_values, pixel_mask, output_hidden_states, targets=labels, output_attentions=output_attentions)
        classes, boxes = self.predictions(fields["intermediate_hidden_states"], fields["init_reference_points"], fields["intermediate_reference_points"])
        dn_outputs = None
        if fields.get("denoising_meta") is not None:
            dn_classes, dn_boxes = self.predictions(fields["dn_hidden_states"], fields["dn_init_reference_points"], fields["dn_reference_points"])
            dn_outputs = prediction_dict(dn_classes, dn_boxes, auxiliary=True)
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            loss, loss_dict, auxiliary_outputs = self.compute_loss(classes, boxes, labels, fields, dn_outputs)
        output = DinoObjectDetectionOutput(
            loss=loss, loss_dict=loss_dict, logits=classes[-1], pred_boxes=boxes[-1], auxiliary_outputs=auxiliary_outputs, dn_outputs=dn_outputs, **fields
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        classes: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        fields: dict[str, Any],
        dn_outputs: dict[str, Any] | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        """``(loss, loss_dict, auxiliary_outputs)`` of ``forward``'s predictions (see ``DinoCriterion``)."""
        targets = targets_on(labels, classes.shape[1], classes.device)
        predictions = prediction_dict(classes, boxes, self.config.auxiliary_loss)
        predictions["interm_outputs"] = {"logits": fields["enc_topk_logits"], "pred_boxes": fields["enc_topk_boxes"]}
        if dn_outputs is not None:
            predictions["dn_outputs"] = dn_outputs if self.config.auxiliary_loss else {k: v for k, v in dn_outputs.items() if k != "auxiliary_outputs"}
            predictions["denoising_meta"] = fields["denoising_meta"]
        loss, loss_dict = self.criterion(predictions, targets)
        return loss, loss_dict, predictions.get("auxiliary_outputs")

    # ------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: DinoConfig | None = None,
        *,
        backbone_body: nn.Module | None = None,
        strict: bool = True,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a DINO detector from a checkpoint.

        Args:
            path: a directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``
                or ``pytorch_model.bin``), a Hugging Face Hub repo id holding the same (resolved with
                ``huggingface_hub`` and its cache), or a ``.pth`` written by the original DINO training
                script (``{"model": state_dict, "args": Namespace}``).
            config: the config to build; default: the checkpoint's ``config.json``, or for a ``.pth``
                the architecture in its ``args`` and the class count of its class head.
            backbone_body: another backbone network to build the model with (see ``DinoModel``).
            strict: raise on missing or unexpected keys (else warn, naming them).
            trust_pickle: allow a ``.pth`` holding Python objects such as the ``args`` Namespace
                (trusted files only).
            kwargs: the loading options of ``DeformableDetrForObjectDetection.from_pretrained``
                (``ignore_mismatched_sizes``, ``output_loading_info``, ``torch_dtype``,
                ``device_map``, ``revision``, ``cache_dir``, ``local_files_only``, ...) and config
                fields to change; anything else raises ``TypeError`` naming it.
        """
        options, overrides = split_loading_kwargs(kwargs, DinoConfig.field_names())
        original = OriginalFormat(checkpoints.convert_original_state_dict, checkpoints.config_from_original_args, original_num_labels)
        config, state_dict, unmapped, _ = read_checkpoint(path, config, options, trust_pickle=trust_pickle, config_class=DinoConfig, original=original)
        if not isinstance(config, DinoConfig):
            raise TypeError(f"config must be a models.DinoConfig, got {type(config).__name__}")
        if overrides:
            config = config.copy(**overrides)
        dtype = auto_dtype(config.extra, state_dict) if options.dtype == "auto" else options.dtype
        model = cls(config.copy(use_pretrained_backbone=False), backbone_body=backbone_body)
        model.config = model.model.config = config
        report = checkpoint_files.load_state_dict_into(
            model, state_dict, ignore_mismatched_sizes=options.ignore_mismatched_sizes, strict=strict, unmapped_keys=unmapped
        )
        place(model, dtype, resolve_device(options.device_map))
        model.eval()
        return (model, report) if options.output_loading_info else model

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``); shared heads once."""
        os.makedirs(directory, exist_ok=True)
        # the file holds the backbone weights: loading it must not look for ImageNet ones
        self.config.copy(use_pretrained_backbone=False).to_json_file(os.path.join(directory, checkpoint_files.CONFIG_NAME))
        checkpoint_files.write_state_dict(self, directory, safe_serialization=safe_serialization)
