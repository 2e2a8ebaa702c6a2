"""``DeformableDetrModel`` and ``DeformableDetrForObjectDetection``: Deformable DETR assembled from
``detr_blocks`` and ``msda``.

Parameter names are those of the Hugging Face models (``model.backbone.conv_encoder.model...``,
``model.input_proj``, ``model.level_embed``, ``model.encoder.layers...``, ``class_embed.N``,
``bbox_embed.N`` ...), so their checkpoints load unchanged and ``transformers`` loads ours.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from detr_blocks.decoder import DeformableDecoder
from detr_blocks.losses import SetCriterion
from detr_blocks.matcher import HungarianMatcher
from detr_blocks.position_embedding import LearnedPositionEmbedding, SinePositionEmbedding
from models.backbones import BackboneWithPositions, ConvEncoder, build_backbone_body
from models.common import checkpoint_files
from models.common.deformable_transformer import DeformableTransformerModel
from models.common.hub import PushToHubMixin
from models.common.key_rules import original_num_labels
from models.common.layers import box_head, class_head, decoder_layers, encoder_stack
from models.common.multi_scale import input_projections
from models.common.outputs import resolve_output_flags
from models.common.predictions import layer_predictions, prediction_dict, targets_on
from models.common.pretrained import OriginalFormat, TiedStateDictMixin, auto_dtype, place, read_checkpoint, split_loading_kwargs
from models.ddetr import checkpoints
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.outputs import DeformableDetrModelOutput, DeformableDetrObjectDetectionOutput
from models.ddetr.query_selection import LearnedQueries, TwoStageProposals

BOX_EPS = 1e-5  # inverse_sigmoid's clamp in the paper's code


def _check_config(config: Any) -> DeformableDetrConfig:
    if not isinstance(config, DeformableDetrConfig):
        raise TypeError(f"config must be a models.DeformableDetrConfig, got {type(config).__name__}")
    config.validate()
    return config


def _backbone(config: DeformableDetrConfig) -> BackboneWithPositions:
    if config.position_embedding_type == "sine":
        position_embedding: nn.Module = SinePositionEmbedding(config.d_model // 2, normalize=True)
    else:
        position_embedding = LearnedPositionEmbedding(config.d_model // 2)
    return BackboneWithPositions(ConvEncoder(build_backbone_body(config)), position_embedding)


class DeformableDetrModel(PushToHubMixin, DeformableTransformerModel):
    """Backbone + deformable transformer, without detection heads, built from a config.

    The steps (``multi_scale_features`` → ``encode`` → ``select_queries`` → ``decode``) are those
    of ``models.common.deformable_transformer.DeformableTransformerModel``; the query selection is
    ``LearnedQueries`` or, with ``two_stage``, ``TwoStageProposals``.

    Args:
        config: the ``DeformableDetrConfig``.
        bbox_embed: the box heads the decoder uses for iterative refinement (and two-stage
            proposals); given by ``DeformableDetrForObjectDetection``. None: no refinement.
        class_embed: the class heads (two-stage uses the last one to score proposals).
        query_selection: another query selection module (default from the config).

    Submodules (Hugging Face names): ``backbone`` (``conv_encoder.model``, ``position_embedding``),
    ``input_proj``, ``level_embed``, ``query_position_embeddings`` (one-stage),
    ``reference_points`` (one-stage), ``encoder``, ``decoder``, ``enc_output``,
    ``enc_output_norm``, ``pos_trans``, ``pos_trans_norm`` (two-stage).
    """

    def __init__(
        self,
        config: DeformableDetrConfig,
        bbox_embed: nn.ModuleList | None = None,
        class_embed: nn.ModuleList | None = None,
        *,
        query_selection: nn.Module | None = None,
    ) -> None:
        config = _check_config(config)
        if config.two_stage and (bbox_embed is None or class_embed is None or len(bbox_embed) <= config.decoder_layers):
            raise ValueError(f"two_stage needs bbox_embed and class_embed with decoder_layers + 1 = {config.decoder_layers + 1} heads (the last scores proposals)")
        backbone = _backbone(config)
        if query_selection is None:
            if config.two_stage:
                query_selection = TwoStageProposals(config.two_stage_num_proposals, config.d_model)
            else:
                query_selection = LearnedQueries(config.num_queries, config.d_model)
        encoder = encoder_stack(config)
        decoder = DeformableDecoder(decoder_layers(config), bbox_embed=bbox_embed, class_embed=class_embed if config.two_stage else None)
        level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
        nn.init.normal_(level_embed)
        super().__init__(
            backbone=backbone,
            input_proj=input_projections(backbone.conv_encoder.intermediate_channel_sizes, config.d_model, config.num_feature_levels),
            level_embed=level_embed,
            encoder=encoder,
            query_selection=query_selection,
            decoder=decoder,
            num_channels=config.num_channels,
            output_class=DeformableDetrModelOutput,
        )
        self.config = config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: Any = None, *, strict: bool = True, **kwargs: Any) -> Any:
        """Load the bare model (no heads) from a checkpoint of either class, as ``transformers`` does.

        A detection checkpoint (keys under ``model.``) loads its transformer; its heads
        (``class_embed.*``, ``bbox_embed.*``) are dropped with a warning naming them. Takes the
        same arguments as ``DeformableDetrForObjectDetection.from_pretrained``.
        """
        return _from_pretrained(cls, path, config, strict=strict, trust_pickle=False, kwargs=kwargs)

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True, *, push_to_hub: bool = False, **hub_kwargs: Any) -> None:
        """Write ``config.json`` (``architectures: ["DeformableDetrModel"]``) and the weights, keys
        without the ``model.`` prefix, as ``transformers``' bare model writes them."""
        _save_pretrained(self, directory, "DeformableDetrModel", safe_serialization, push_to_hub, hub_kwargs)


class DeformableDetrForObjectDetection(PushToHubMixin, TiedStateDictMixin, nn.Module):
    """Deformable DETR with class and box heads on every decoder layer, and its training loss.

    ``class_embed`` and ``bbox_embed`` hold one head per decoder layer (plus one for two-stage
    proposals). Without box refinement all entries are the same module (one shared head, as in
    the paper); with refinement each layer has its own, and the decoder uses them to refine.

    ``state_dict()`` lists each shared tensor once (the layout ``save_pretrained`` writes), so
    ``transformers.Trainer`` can save it with safetensors; ``load_state_dict`` accepts it (see
    ``models.common.pretrained.TiedStateDictMixin``).
    """

    main_input_name = "pixel_values"

    def __init__(self, config: DeformableDetrConfig) -> None:
        super().__init__()
        self.config = _check_config(config)
        num_heads = config.decoder_layers + (1 if config.two_stage else 0)
        if config.with_box_refine:
            class_heads = [class_head(config) for _ in range(num_heads)]
            box_heads = [box_head(config) for _ in range(num_heads)]
            nn.init.constant_(box_heads[0].layers[-1].bias[2:], 0.0 if config.two_stage else -2.0)
        else:
            shared_class, shared_box = class_head(config), box_head(config)
            nn.init.constant_(shared_box.layers[-1].bias[2:], -2.0)
            class_heads, box_heads = [shared_class] * num_heads, [shared_box] * num_heads
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
        return layer_predictions(
            self.class_embed, self.bbox_embed, outputs.intermediate_hidden_states, outputs.init_reference_points,
            outputs.intermediate_reference_points, BOX_EPS,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DeformableDetrObjectDetectionOutput | tuple:
        """Args:
            pixel_values: ``[B, C, H, W]`` normalized images; pixel_mask: ``[B, H, W]`` (1 = real pixel).
            labels: per image ``{"class_labels": int64 [N], "boxes": [N, 4] normalized cx, cy, w, h}``;
                when given, ``loss`` and ``loss_dict`` are computed.
            output_hidden_states, output_attentions, return_dict: as in ``DeformableDetrModel``
                (None: the config's value).

        Returns:
            ``DeformableDetrObjectDetectionOutput``: ``logits`` ``[B, Q, num_labels]``,
            ``pred_boxes`` ``[B, Q, 4]`` and the model's fields (plus the loss with labels); with
            ``return_dict=False`` its ``to_tuple()`` (the set fields in order, as ``transformers``).
        """
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.model(pixel_values, pixel_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True)
        classes, boxes = self._predictions(outputs)
        logits, pred_boxes = classes[-1], boxes[-1]
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            loss, loss_dict, auxiliary_outputs = self.compute_loss(classes, boxes, labels, outputs)
        output = DeformableDetrObjectDetectionOutput(
            loss=loss, loss_dict=loss_dict, logits=logits, pred_boxes=pred_boxes, auxiliary_outputs=auxiliary_outputs, **outputs.all_fields()
        )
        return output if return_dict else output.to_tuple()

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
        targets = targets_on(labels, classes.shape[1], classes.device)
        predictions = prediction_dict(classes, boxes, self.config.auxiliary_loss)
        auxiliary_outputs = predictions.get("auxiliary_outputs")
        if self.config.two_stage:
            predictions["enc_outputs"] = {"logits": outputs.enc_outputs_class, "pred_boxes": outputs.enc_outputs_coord_logits.sigmoid()}
        loss, loss_dict = self.criterion(predictions, targets)
        return loss, loss_dict, auxiliary_outputs

    # ------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: Any = None,
        *,
        strict: bool = True,
        trust_pickle: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a detector from a local checkpoint or a Hugging Face Hub repo id.

        Args:
            path: a directory in the Hugging Face layout (``config.json`` + ``model.safetensors``
                or ``pytorch_model.bin``), a Hub repo id (resolved with ``huggingface_hub`` and its
                cache), or a ``.pth`` file of the original repository
                (``{"model": state_dict, "args": Namespace}``).
            config: the config to build (ours or a ``transformers.DeformableDetrConfig``, which is
                converted); default: the checkpoint's ``config.json``, or for a ``.pth`` the variant
                in its ``args`` and the class count of its class head.
            strict: raise on missing or unexpected keys (else warn, naming them).
            trust_pickle: allow a ``.pth`` holding arbitrary Python objects (trusted files only).
            kwargs: loading options of ``transformers``' ``from_pretrained``:
                ``ignore_mismatched_sizes`` (fresh class heads, with a warning, when the class
                count differs), ``output_loading_info`` (also return the ``LoadReport``),
                ``torch_dtype`` / ``dtype`` (a dtype, its name or ``"auto"``), ``device_map``
                (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``, a device), ``revision``,
                ``cache_dir``, ``local_files_only``, ``token``, ``force_download``,
                ``subfolder``, ``use_safetensors``, ``state_dict``; and config fields to change
                (``num_labels=5``, ``disable_custom_kernels=True``, ...). Any other name raises
                ``TypeError`` naming it; options we cannot honour raise ``NotImplementedError``.
        """
        return _from_pretrained(cls, path, config, strict=strict, trust_pickle=trust_pickle, kwargs=kwargs)

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True, *, push_to_hub: bool = False, **hub_kwargs: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) in the
        Hugging Face layout; shared heads are written once, as ``transformers`` does. The written
        config has ``use_pretrained_backbone=False``, since the weights include the backbone.
        ``push_to_hub=True`` then uploads the folder (``repo_id`` defaults to its name)."""
        _save_pretrained(self, directory, "DeformableDetrForObjectDetection", safe_serialization, push_to_hub, hub_kwargs)


_HEAD_PREFIXES = ("class_embed.", "bbox_embed.")


def _detection_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of either class with the detector's key names (a bare model's keys gain ``model.``)."""
    if any(key.startswith("model.") for key in state_dict):
        return state_dict
    return {f"model.{key}": value for key, value in state_dict.items()}


def _bare_layout(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Detector keys → bare model keys: (state dict without ``model.``, the head keys dropped)."""
    dropped = sorted(key for key in state_dict if not key.startswith("model."))
    return {key[len("model."):]: value for key, value in state_dict.items() if key.startswith("model.")}, dropped


def _bare_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _bare_layout(checkpoints.backbone_keys_to_transformers(_detection_layout(state_dict)))[0]


def _from_pretrained(cls: type, path: str | os.PathLike, config: Any, *, strict: bool, trust_pickle: bool, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained`` of both classes (``cls`` is ``DeformableDetrModel`` or the detector)."""
    import warnings

    bare = issubclass(cls, DeformableDetrModel)
    options, overrides = split_loading_kwargs(kwargs, DeformableDetrConfig.field_names())
    if config is not None:
        config = DeformableDetrConfig.from_transformers(config)
    original = OriginalFormat(checkpoints.convert_original_state_dict, checkpoints.config_from_original_args, original_num_labels)
    config, state_dict, unmapped, from_original = read_checkpoint(
        path, config, options, trust_pickle=trust_pickle, config_class=DeformableDetrConfig, original=original
    )
    if not from_original:
        state_dict = _detection_layout(state_dict)
        if config.backbone_config is not None:  # transformers' own ResNet: its names → torchvision's
            state_dict = checkpoints.backbone_keys_from_transformers(state_dict)
    if overrides:
        config = config.copy(**overrides)
    dropped: list[str] = []
    if bare:
        state_dict, dropped = _bare_layout(state_dict)
    dtype = auto_dtype(config.extra, state_dict) if options.dtype == "auto" else options.dtype
    # the checkpoint provides the backbone weights: never look for ImageNet ones
    model = cls(config.copy(use_pretrained_backbone=False))
    model.config = config
    if not bare:
        model.model.config = config
    heads_missing = not bare and not any(key.startswith(_HEAD_PREFIXES) for key in state_dict)
    report = checkpoint_files.load_state_dict_into(
        model,
        state_dict,
        ignore_mismatched_sizes=options.ignore_mismatched_sizes,
        strict=strict and not heads_missing,
        unmapped_keys=unmapped,
        key_alias=None if bare else checkpoints.hf_decoder_alias,
    )
    if dropped:
        report.unexpected_keys.extend(dropped)
        warnings.warn(f"{cls.__name__} has no detection heads: these checkpoint weights were not used: {', '.join(dropped[:20])}"
                      f"{f' ... ({len(dropped)} in all)' if len(dropped) > 20 else ''}", stacklevel=3)
    place(model, dtype, _device(options.device_map))
    model.eval()
    return (model, report) if options.output_loading_info else model


def _device(device_map: Any) -> torch.device | None:
    from models.common.pretrained import resolve_device

    return resolve_device(device_map)


def _save_pretrained(model: nn.Module, directory: str | os.PathLike, architecture: str, safe_serialization: bool,
                     push_to_hub: bool, hub_kwargs: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    data = model.config.to_dict()
    data["architectures"] = [architecture]
    # the file holds the backbone weights: loading it (here or in transformers) must not
    # go looking for ImageNet ones
    data["use_pretrained_backbone"] = False
    DeformableDetrConfig.from_dict(data).to_json_file(os.path.join(directory, checkpoint_files.CONFIG_NAME))
    rename = None
    if model.config.backbone_config is not None:
        rename = _bare_to_transformers if isinstance(model, DeformableDetrModel) else checkpoints.backbone_keys_to_transformers
    checkpoint_files.write_state_dict(model, directory, safe_serialization=safe_serialization, rename=rename)
    if push_to_hub:
        repo_id = hub_kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(os.fspath(directory)))
        model.push_to_hub(repo_id, safe_serialization=safe_serialization, **hub_kwargs)
    elif hub_kwargs:
        raise TypeError(f"save_pretrained got unexpected keyword arguments {sorted(hub_kwargs)}")
