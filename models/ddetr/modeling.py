"""``DeformableDetrModel`` and ``DeformableDetrForObjectDetection``: Deformable DETR assembled from
``detr_blocks`` and ``msda``.

Parameter names are those of the Hugging Face models (``model.backbone.conv_encoder.model...``,
``model.input_proj``, ``model.level_embed``, ``model.encoder.layers...``, ``class_embed.N``,
``bbox_embed.N`` ...), so their checkpoints load unchanged and ``transformers`` loads ours.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from detr_blocks.decoder import DeformableDecoder, DeformableDecoderLayer
from detr_blocks.encoder import DeformableEncoder, DeformableEncoderLayer
from detr_blocks.losses import SetCriterion
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.mlp import MLP
from detr_blocks.position_embedding import LearnedPositionEmbedding, SinePositionEmbedding
from detr_blocks.two_stage import encoder_output_proposals, proposal_position_embedding, select_top_proposals
from detr_blocks.functional import refine_boxes
from detr_blocks.valid_ratio import valid_ratios as compute_valid_ratios
from models import checkpoints
from models.backbone import BackboneWithPositions, ConvEncoder, build_backbone_body
from models.config import DeformableDetrConfig
from models.outputs import DeformableDetrModelOutput, DeformableDetrObjectDetectionOutput
from msda import MultiScaleDeformableAttention


def _check_config(config: Any) -> DeformableDetrConfig:
    if not isinstance(config, DeformableDetrConfig):
        raise TypeError(f"config must be a models.DeformableDetrConfig, got {type(config).__name__}")
    config.validate()
    return config


def _check_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, num_channels: int) -> torch.Tensor:
    """Validate inputs; return the pixel mask (1 = real pixel), all ones when None."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values must be a [B, {num_channels}, H, W] tensor, got {tuple(getattr(pixel_values, 'shape', ()))}")
    batch, _, height, width = pixel_values.shape
    if pixel_mask is None:
        return torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
    if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != (batch, height, width):
        raise ValueError(f"pixel_mask must be a [B={batch}, H={height}, W={width}] tensor (1 = real pixel, 0 = padding), got {tuple(getattr(pixel_mask, 'shape', ()))}")
    return pixel_mask


def _input_projections(config: DeformableDetrConfig, channels: list[int]) -> nn.ModuleList:
    """1x1 conv + GroupNorm per backbone level; 3x3 stride-2 conv + GroupNorm per extra level."""
    projections = [nn.Sequential(nn.Conv2d(width, config.d_model, kernel_size=1), nn.GroupNorm(32, config.d_model)) for width in channels]
    in_channels = channels[-1]
    for _ in range(config.num_feature_levels - len(channels)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, config.d_model, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, config.d_model)))
        in_channels = config.d_model
    for projection in projections:
        nn.init.xavier_uniform_(projection[0].weight, gain=1)
        nn.init.constant_(projection[0].bias, 0)
    return nn.ModuleList(projections)


def _deformable_attention(config: DeformableDetrConfig, num_heads: int, num_points: int) -> MultiScaleDeformableAttention:
    return MultiScaleDeformableAttention(
        config.d_model, num_heads, config.num_feature_levels, num_points, use_reference=config.disable_custom_kernels
    )


def _encoder(config: DeformableDetrConfig) -> DeformableEncoder:
    layers = [
        DeformableEncoderLayer(
            config.d_model,
            config.encoder_ffn_dim,
            self_attn=_deformable_attention(config, config.encoder_attention_heads, config.encoder_n_points),
            dropout=config.dropout,
            activation_dropout=config.activation_dropout,
            activation=config.activation_function,
        )
        for _ in range(config.encoder_layers)
    ]
    return DeformableEncoder(layers)


def _decoder_layers(config: DeformableDetrConfig) -> list[DeformableDecoderLayer]:
    return [
        DeformableDecoderLayer(
            config.d_model,
            config.decoder_ffn_dim,
            encoder_attn=_deformable_attention(config, config.decoder_attention_heads, config.decoder_n_points),
            num_heads=config.decoder_attention_heads,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            activation=config.activation_function,
        )
        for _ in range(config.decoder_layers)
    ]


def _xavier_linears(module: nn.Module) -> None:
    """The paper's initialisation of the transformer's feed-forward layers."""
    for layer in module.modules():
        for name in ("fc1", "fc2"):
            linear = getattr(layer, name, None)
            if isinstance(linear, nn.Linear):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)


class DeformableDetrModel(nn.Module):
    """Backbone + deformable transformer, without detection heads.

    Args:
        config: the ``DeformableDetrConfig``.
        bbox_embed: the box heads the decoder uses for iterative refinement (and two-stage
            proposals); given by ``DeformableDetrForObjectDetection``. None: no refinement.
        class_embed: the class heads (two-stage uses the last one to score proposals).

    Submodules (Hugging Face names): ``backbone`` (``conv_encoder.model``, ``position_embedding``),
    ``input_proj``, ``level_embed``, ``query_position_embeddings`` (one-stage),
    ``reference_points`` (one-stage), ``encoder``, ``decoder``, ``enc_output``,
    ``enc_output_norm``, ``pos_trans``, ``pos_trans_norm`` (two-stage).
    """

    def __init__(self, config: DeformableDetrConfig, bbox_embed: nn.ModuleList | None = None, class_embed: nn.ModuleList | None = None) -> None:
        super().__init__()
        self.config = _check_config(config)
        if config.two_stage and (bbox_embed is None or class_embed is None or len(bbox_embed) <= config.decoder_layers):
            raise ValueError(f"two_stage needs bbox_embed and class_embed with decoder_layers + 1 = {config.decoder_layers + 1} heads (the last scores proposals)")
        if config.position_embedding_type == "sine":
            position_embedding: nn.Module = SinePositionEmbedding(config.d_model // 2, normalize=True)
        else:
            position_embedding = LearnedPositionEmbedding(config.d_model // 2)
        conv_encoder = ConvEncoder(build_backbone_body(config))
        self.backbone = BackboneWithPositions(conv_encoder, position_embedding)
        self.input_proj = _input_projections(config, conv_encoder.intermediate_channel_sizes)
        if not config.two_stage:
            self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model * 2)
        self.encoder = _encoder(config)
        self.decoder = DeformableDecoder(_decoder_layers(config), bbox_embed=bbox_embed, class_embed=class_embed if config.two_stage else None)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
        nn.init.normal_(self.level_embed)
        if config.two_stage:
            self.enc_output = nn.Linear(config.d_model, config.d_model)
            self.enc_output_norm = nn.LayerNorm(config.d_model)
            self.pos_trans = nn.Linear(config.d_model * 2, config.d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(config.d_model * 2)
        else:
            self.reference_points = nn.Linear(config.d_model, 2)
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        _xavier_linears(self.encoder)
        _xavier_linears(self.decoder.layers)

    # ----------------------------------------------------------------------------- backbone
    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        for parameter in self.backbone.conv_encoder.model.parameters():
            parameter.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter (including the stem and layer1, frozen by default)."""
        for parameter in self.backbone.conv_encoder.model.parameters():
            parameter.requires_grad_(True)

    # ------------------------------------------------------------------------------ forward
    def _multi_scale_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        """Backbone, projections and the extra strided levels: per level (source, padding mask, position)."""
        features, positions = self.backbone(pixel_values, pixel_mask)
        sources = [projection(feature) for projection, (feature, _) in zip(self.input_proj, features)]
        padding = [~mask for _, mask in features]
        positions = list(positions)
        for level in range(len(features), self.config.num_feature_levels):
            source = self.input_proj[level](features[-1][0] if level == len(features) else sources[-1])
            mask = nn.functional.interpolate(pixel_mask[None].to(pixel_values.dtype), size=source.shape[-2:]).to(torch.bool)[0]
            sources.append(source)
            padding.append(~mask)
            positions.append(self.backbone.position_embedding(~mask, dtype=source.dtype))
        return sources, padding, positions

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> DeformableDetrModelOutput:
        """Args:
            pixel_values: ``[B, C, H, W]`` normalized images (padded to one size).
            pixel_mask: ``[B, H, W]``, 1 on real pixels and 0 on padding; None = no padding.
            output_hidden_states: also return every encoder and decoder layer's input/output.
            output_attentions: not supported (the fused attention does not materialise weights).
            return_dict: accepted for compatibility; the output is always a
                ``DeformableDetrModelOutput`` (use ``.to_tuple()`` for a tuple).

        Returns:
            ``DeformableDetrModelOutput`` (see its fields).
        """
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: the deformable attention op does not return its weights")
        pixel_mask = _check_pixels(pixel_values, pixel_mask, self.config.num_channels)
        sources, padding, positions = self._multi_scale_inputs(pixel_values, pixel_mask)

        spatial_shapes_list = [tuple(source.shape[-2:]) for source in sources]
        source_flatten = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        padding_flatten = torch.cat([mask.flatten(1) for mask in padding], 1)
        position_flatten = torch.cat(
            [position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1) for level, position in enumerate(positions)], 1
        )
        spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=source_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        ratios = torch.stack([compute_valid_ratios(mask, dtype=source_flatten.dtype) for mask in padding], 1)

        encoded = self.encoder(
            source_flatten,
            spatial_shapes,
            level_start_index,
            ratios,
            position_flatten,
            padding_flatten,
            output_hidden_states=output_hidden_states,
            spatial_shapes_list=spatial_shapes_list,
        )
        memory = encoded.last_hidden_state
        batch, width = memory.shape[0], self.config.d_model

        enc_outputs_class = enc_outputs_coord_logits = None
        if self.config.two_stage:
            masked, proposals = encoder_output_proposals(memory, padding_flatten, spatial_shapes_list)
            object_queries = self.enc_output_norm(self.enc_output(masked))
            enc_outputs_class = self.decoder.class_embed[-1](object_queries)
            enc_outputs_coord_logits = self.decoder.bbox_embed[-1](object_queries) + proposals
            top_logits, _ = select_top_proposals(enc_outputs_class, enc_outputs_coord_logits, self.config.two_stage_num_proposals)
            reference_points = top_logits.sigmoid()
            embedded = proposal_position_embedding(top_logits, width // 2)
            query_position, target = self.pos_trans_norm(self.pos_trans(embedded)).split(width, dim=2)
        else:
            query_position, target = self.query_position_embeddings.weight.split(width, dim=1)
            query_position = query_position.unsqueeze(0).expand(batch, -1, -1)
            target = target.unsqueeze(0).expand(batch, -1, -1)
            reference_points = self.reference_points(query_position).sigmoid()

        decoded = self.decoder(
            target,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            ratios,
            query_position,
            padding_flatten,
            output_hidden_states=output_hidden_states,
        )
        return DeformableDetrModelOutput(
            init_reference_points=reference_points,
            last_hidden_state=decoded.last_hidden_state,
            intermediate_hidden_states=decoded.intermediate_hidden_states,
            intermediate_reference_points=decoded.intermediate_reference_points,
            decoder_hidden_states=decoded.hidden_states,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoded.hidden_states,
            enc_outputs_class=enc_outputs_class,
            enc_outputs_coord_logits=enc_outputs_coord_logits,
        )


def _box_head(config: DeformableDetrConfig) -> MLP:
    head = MLP(config.d_model, config.d_model, 4, num_layers=3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


def _class_head(config: DeformableDetrConfig) -> nn.Linear:
    head = nn.Linear(config.d_model, config.num_labels)
    prior = 0.01  # the paper's focal-loss prior: every class starts at probability 0.01
    nn.init.constant_(head.bias, -math.log((1 - prior) / prior))
    return head


class DeformableDetrForObjectDetection(nn.Module):
    """Deformable DETR with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` and ``bbox_embed`` hold one head per decoder layer (plus one for two-stage
    proposals). Without box refinement all entries are the same module (one shared head, as in
    the paper); with refinement each layer has its own, and the decoder uses them to refine.
    """

    def __init__(self, config: DeformableDetrConfig) -> None:
        super().__init__()
        self.config = _check_config(config)
        num_heads = config.decoder_layers + (1 if config.two_stage else 0)
        if config.with_box_refine:
            class_heads = [_class_head(config) for _ in range(num_heads)]
            box_heads = [_box_head(config) for _ in range(num_heads)]
            nn.init.constant_(box_heads[0].layers[-1].bias[2:], 0.0 if config.two_stage else -2.0)
        else:
            class_head, box_head = _class_head(config), _box_head(config)
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
            class_heads, box_heads = [class_head] * num_heads, [box_head] * num_heads
        class_embed, bbox_embed = nn.ModuleList(class_heads), nn.ModuleList(box_heads)
        self.model = DeformableDetrModel(config, bbox_embed=bbox_embed if config.with_box_refine else None, class_embed=class_embed)
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost, focal_alpha=config.focal_alpha)
        weights = {"loss_ce": 1.0, "loss_bbox": float(config.bbox_loss_coefficient), "loss_giou": float(config.giou_loss_coefficient)}
        self.criterion = SetCriterion(config.num_labels, matcher, weight_dict=weights, focal_alpha=config.focal_alpha)

    def freeze_backbone(self) -> None:
        """Stop training every backbone parameter."""
        self.model.freeze_backbone()

    def unfreeze_backbone(self) -> None:
        """Train every backbone parameter."""
        self.model.unfreeze_backbone()

    # ---------------------------------------------------------------------------- forward
    def _predictions(self, outputs: DeformableDetrModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[D, B, Q, K]`` and boxes ``[D, B, Q, 4]`` of every decoder layer."""
        hidden = outputs.intermediate_hidden_states
        references = [outputs.init_reference_points] + list(outputs.intermediate_reference_points.unbind(1)[:-1])
        classes, boxes = [], []
        for level in range(hidden.shape[1]):
            classes.append(self.class_embed[level](hidden[:, level]))
            boxes.append(refine_boxes(self.bbox_embed[level](hidden[:, level]), references[level]))
        return torch.stack(classes), torch.stack(boxes)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> DeformableDetrObjectDetectionOutput:
        """Args:
            pixel_values: ``[B, C, H, W]`` normalized images; pixel_mask: ``[B, H, W]`` (1 = real pixel).
            labels: per image ``{"class_labels": int64 [N], "boxes": [N, 4] normalized cx, cy, w, h}``;
                when given, ``loss`` and ``loss_dict`` are computed.
            output_hidden_states, output_attentions, return_dict: as in ``DeformableDetrModel``.

        Returns:
            ``DeformableDetrObjectDetectionOutput``: ``logits`` ``[B, Q, num_labels]``,
            ``pred_boxes`` ``[B, Q, 4]`` and the model's fields (plus the loss with labels).
        """
        outputs = self.model(pixel_values, pixel_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        classes, boxes = self._predictions(outputs)
        logits, pred_boxes = classes[-1], boxes[-1]
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            loss, loss_dict, auxiliary_outputs = self.compute_loss(classes, boxes, labels, outputs)
        return DeformableDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            init_reference_points=outputs.init_reference_points,
            last_hidden_state=outputs.last_hidden_state,
            intermediate_hidden_states=outputs.intermediate_hidden_states,
            intermediate_reference_points=outputs.intermediate_reference_points,
            decoder_hidden_states=outputs.decoder_hidden_states,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            enc_outputs_class=outputs.enc_outputs_class,
            enc_outputs_coord_logits=outputs.enc_outputs_coord_logits,
        )

    # ------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        classes: torch.Tensor,
        boxes: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        outputs: DeformableDetrModelOutput,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        """The training loss of ``forward``'s predictions.

        Args:
            classes: ``[D, B, Q, K]`` and boxes ``[D, B, Q, 4]``: every decoder layer's predictions.
            labels: per image ``{"class_labels", "boxes"}``.
            outputs: the model output (two-stage proposals are supervised class-agnostically).

        Returns:
            ``(loss, loss_dict, auxiliary_outputs)``. The weights are those of ``transformers``
            (``loss_ce`` 1, ``loss_bbox`` ``bbox_loss_coefficient``, ``loss_giou``
            ``giou_loss_coefficient``, the same for every ``_i`` auxiliary term); two-stage adds the
            paper's encoder-proposal terms (suffix ``_enc``), which ``transformers`` leaves out.
        """
        if not isinstance(labels, (list, tuple)) or len(labels) != classes.shape[1]:
            raise ValueError(f"labels must be a list of {classes.shape[1]} dicts (one per image), got {type(labels).__name__}")
        device = classes.device
        targets = [{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in target.items()} for target in labels]
        predictions: dict[str, Any] = {"logits": classes[-1], "pred_boxes": boxes[-1]}
        auxiliary_outputs = None
        if self.config.auxiliary_loss:
            auxiliary_outputs = [{"logits": c, "pred_boxes": b} for c, b in zip(classes[:-1], boxes[:-1])]
            predictions["auxiliary_outputs"] = auxiliary_outputs
        if self.config.two_stage:
            predictions["enc_outputs"] = {"logits": outputs.enc_outputs_class, "pred_boxes": outputs.enc_outputs_coord_logits.sigmoid()}
        loss, loss_dict = self.criterion(predictions, targets)
        return loss, loss_dict, auxiliary_outputs

    # ------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: DeformableDetrConfig | None = None,
        *,
        ignore_mismatched_sizes: bool = False,
        strict: bool = True,
        output_loading_info: bool = False,
        trust_pickle: bool = False,
        **config_overrides: Any,
    ):
        """Load a detector from a local checkpoint (nothing is downloaded).

        Args:
            path: a directory in the Hugging Face layout (``config.json`` + ``model.safetensors``
                or ``pytorch_model.bin``), or a ``.pth`` file of the original repository
                (``{"model": state_dict, "args": Namespace}``).
            config: the config to build; default: the directory's ``config.json``, or for a
                ``.pth`` the variant in its ``args`` and the class count of its class head.
            ignore_mismatched_sizes: when the checkpoint's class head has another number of
                classes than ``config.num_labels``, start fresh heads (with a warning) instead of
                raising.
            strict: raise on missing or unexpected keys (else warn, naming them).
            output_loading_info: also return the ``LoadReport``.
            trust_pickle: allow a ``.pth`` holding arbitrary Python objects (trusted files only).
            config_overrides: config fields to change (e.g. ``num_labels=5``,
                ``disable_custom_kernels=True``).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            if config is None:
                config = DeformableDetrConfig.from_pretrained(path)
            state_dict = checkpoints.read_state_dict(path)
            if config.backbone_config is not None:  # transformers' own ResNet: its names → torchvision's
                state_dict = checkpoints.backbone_keys_from_transformers(state_dict)
            unmapped: list[str] = []
        elif os.path.isfile(path):
            original, args = checkpoints.read_original_checkpoint(path, trust_pickle=trust_pickle)
            state_dict, unmapped = checkpoints.convert_original_state_dict(original)
            if config is None:
                if args is None:
                    raise ValueError(f"{path} has no 'args'; pass config= with the variant it was trained as")
                config = checkpoints.config_from_original_args(args, checkpoints.original_num_labels(state_dict))
        else:
            raise FileNotFoundError(f"{path!r} is neither a checkpoint directory nor a file")
        if config_overrides:
            config = config.copy(**config_overrides)
        # the checkpoint provides the backbone weights: never look for ImageNet ones
        build_config = config.copy(use_pretrained_backbone=False)
        model = cls(build_config)
        model.config = config
        model.model.config = config
        report = checkpoints.load_state_dict_into(
            model, state_dict, ignore_mismatched_sizes=ignore_mismatched_sizes, strict=strict, unmapped_keys=unmapped
        )
        model.eval()
        return (model, report) if output_loading_info else model

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) in the
        Hugging Face layout; shared heads are written once, as ``transformers`` does. The written
        config has ``use_pretrained_backbone=False``, since the weights include the backbone."""
        os.makedirs(directory, exist_ok=True)
        data = self.config.to_dict()
        data.setdefault("architectures", ["DeformableDetrForObjectDetection"])
        # the file holds the backbone weights: loading it (here or in transformers) must not
        # go looking for ImageNet ones
        data["use_pretrained_backbone"] = False
        DeformableDetrConfig.from_dict(data).to_json_file(os.path.join(directory, checkpoints.CONFIG_NAME))
        rename = checkpoints.backbone_keys_to_transformers if self.config.backbone_config is not None else None
        checkpoints.write_state_dict(self, directory, safe_serialization=safe_serialization, rename=rename)
