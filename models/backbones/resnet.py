"""Convolutional backbone of Deformable DETR: a ResNet with frozen BatchNorm, multi-scale outputs.

Module names follow ``torchvision``/``timm`` ResNets (``conv1``, ``bn1``, ``layer1`` ... ``layer4``),
which is also how the Hugging Face checkpoints name them under ``model.backbone.conv_encoder.model``.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")
_STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


def replace_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a ``FrozenBatchNorm2d``
    holding the same statistics and affine parameters. Returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            replace_batch_norm(child)
    return module


def _fold(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> nn.Conv2d:
    """``norm(conv(x))`` as one convolution: weight scaled per output channel, bias shifted."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, bias=True)
    folded = folded.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.bias)
        folded.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    folded.requires_grad_(False)
    return folded


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place: replace each ``convN`` + ``bnN`` pair (ResNet naming) and each
    ``Sequential(Conv2d, FrozenBatchNorm2d)`` by one convolution and an ``nn.Identity``."""
    for child in list(module.modules()):
        for name, conv in list(child.named_children()):
            if isinstance(conv, nn.Conv2d) and name.startswith("conv"):
                norm = getattr(child, "bn" + name[len("conv"):], None)
                if isinstance(norm, FrozenBatchNorm2d):
                    setattr(child, name, _fold(conv, norm))
                    setattr(child, "bn" + name[len("conv"):], nn.Identity())
        if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[0], nn.Conv2d) and isinstance(child[1], FrozenBatchNorm2d):
            child[0] = _fold(child[0], child[1])
            child[1] = nn.Identity()
    return module


def _torchvision_weights_file(name: str) -> str:
    """Where ``torch.hub`` keeps the ImageNet weights of torchvision's ``name``."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)), weights.url


class ResNetBody(nn.Module):
    """The stages of a torchvision ResNet up to the last requested one, without pooling and fc.

    Args:
        name: one of ``TORCHVISION_RESNETS``.
        out_indices: stages (1-4) whose outputs ``forward`` returns.
        output_stride: 32 (plain), 16 (last stage dilated: DC5) or 8.
        num_channels: input channels.
        pretrained: load torchvision's ImageNet weights from the local torch hub cache.
        network: a prebuilt torchvision ``ResNet`` to take the stages from (``name`` then only
            selects the stage widths).
    """

    def __init__(
        self, name: str, out_indices: Sequence[int], output_stride: int = 32, num_channels: int = 3, pretrained: bool = False, network: nn.Module | None = None
    ) -> None:
        super().__init__()
        import torchvision

        if name not in TORCHVISION_RESNETS:
            raise ValueError(f"backbone must be one of {TORCHVISION_RESNETS} for the torchvision backbone, got {name!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if output_stride != 32 and name in _BASIC_BLOCK_RESNETS:
            raise ValueError(f"dilation (output_stride {output_stride}) needs a bottleneck ResNet (resnet50/101) with torchvision; {name} has basic blocks (install timm to use it)")
        dilate = [False, output_stride == 8, output_stride <= 16]
        if network is None:
            network = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=dilate, norm_layer=nn.BatchNorm2d)
        if pretrained:
            path, url = _torchvision_weights_file(name)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"use_pretrained_backbone=True needs torchvision's ImageNet weights for {name} in the local cache at {path}, "
                    f"and nothing is downloaded. Copy {url} there (e.g. `python -c \"import torchvision; "
                    f"torchvision.models.{name}(weights='IMAGENET1K_V1')\"` on a machine with network access, then copy "
                    f"{torch.hub.get_dir()}), set TORCH_HOME to a directory holding hub/checkpoints/{os.path.basename(path)}, "
                    "or build with use_pretrained_backbone=False and load a full detector checkpoint."
                )
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if num_channels != 3:
            if pretrained:
                raise ValueError(f"pretrained ImageNet weights have 3 input channels, got num_channels={num_channels}")
            network.conv1 = nn.Conv2d(num_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        replace_batch_norm(network)
        self.out_indices = tuple(out_indices)
        self.conv1 = network.conv1
        self.bn1 = network.bn1
        self.relu = network.relu
        self.maxpool = network.maxpool
        last = max(self.out_indices)
        for stage in range(1, last + 1):
            setattr(self, f"layer{stage}", getattr(network, f"layer{stage}"))
        self.channels = [_STAGE_CHANNELS[name][stage - 1] for stage in self.out_indices]
        self.strides = [min(4 * 2 ** (stage - 1), output_stride) for stage in self.out_indices]

        # inference copy with BatchNorm folded into the convolutions (not a submodule: it is not
        # saved, and it is rebuilt whenever a weight changes)
        object.__setattr__(self, "_inference_copy", None)
        object.__setattr__(self, "_inference_key", None)

    def _run(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        features = []
        for stage in range(1, max(self.out_indices) + 1):
            hidden = getattr(self, f"layer{stage}")(hidden)
            if stage in self.out_indices:
                features.append(hidden)
        return features

    def _folded(self) -> "ResNetBody":
        """A copy with every FrozenBatchNorm2d folded into the convolution before it, in
        channels-last layout: the same function (to float rounding), about 2x faster on CPU."""
        tensors = list(self.parameters()) + list(self.buffers())
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._inference_key != key:
            object.__setattr__(self, "_inference_copy", None)  # not copied along
            folded = copy.deepcopy(self)
            object.__setattr__(folded, "_inference_copy", None)
            fold_batch_norms(folded)
            folded.to(memory_format=torch.channels_last)
            object.__setattr__(self, "_inference_copy", folded)
            object.__setattr__(self, "_inference_key", key)
        return self._inference_copy

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C_in, H, W]`` → one ``[B, C_s, H/stride_s, W/stride_s]`` map per ``out_indices`` stage.

        In eval mode without autograd (``torch.inference_mode()`` / ``torch.no_grad()``), a cached
        copy with BatchNorm folded into the convolutions runs instead (outputs in channels-last
        memory layout; values equal up to float rounding). Training, autograd and tracing
        (``torch.export``, ONNX) use the modules as they are.
        """
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if self.training or torch.is_grad_enabled() or tracing:
            return self._run(pixel_values)
        return self._folded()._run(pixel_values.contiguous(memory_format=torch.channels_last))


def timm_body(name: str, out_indices: Sequence[int], num_channels: int = 3, pretrained: bool = False, **kwargs) -> nn.Module:
    """A ``timm`` feature extractor (``features_only=True``) with frozen BatchNorm; its ``forward``
    returns a list of maps and its ``channels`` attribute their widths. Parameter names are timm's."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"backbone {name!r} needs timm (pip install timm); torchvision provides only {TORCHVISION_RESNETS}") from error
    try:
        body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), in_chans=num_channels, **kwargs)
    except Exception as error:  # timm raises several types for missing weights or unknown names
        if pretrained:
            raise RuntimeError(
                f"could not load timm's pretrained weights for {name!r} (nothing is downloaded here): put them in the "
                "Hugging Face hub cache on this machine, or use use_pretrained_backbone=False and a full detector checkpoint"
            ) from error
        raise
    replace_batch_norm(body)
    body.channels = list(body.feature_info.channels())
    body.strides = list(body.feature_info.reduction())
    return body


class ConvEncoder(nn.Module):
    """Backbone body plus the padding mask at each output resolution.

    ``self.model`` holds the network, so its parameters are ``model.conv1.weight``, ``model.layer1...``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.intermediate_channel_sizes = list(model.channels)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Args: pixel_values ``[B, C, H, W]``; pixel_mask ``[B, H, W]`` (1 = real pixel, 0 = padding).

        Returns: ``[(feature [B, C_s, H_s, W_s], mask bool [B, H_s, W_s]), ...]`` (mask True = real pixel).
        """
        features = self.model(pixel_values)
        mask = pixel_mask[None].to(pixel_values.dtype)
        return [(feature, nn.functional.interpolate(mask, size=feature.shape[-2:]).to(torch.bool)[0]) for feature in features]


class BackboneWithPositions(nn.Module):
    """``conv_encoder`` followed by ``position_embedding`` on every feature map.

    ``position_embedding(padding_mask bool [B, H, W], dtype) -> [B, d_model, H, W]`` (True = padding,
    the ``detr_blocks`` convention).
    """

    def __init__(self, conv_encoder: ConvEncoder, position_embedding: nn.Module) -> None:
        super().__init__()
        self.conv_encoder = conv_encoder
        self.position_embedding = position_embedding

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        features = self.conv_encoder(pixel_values, pixel_mask)
        positions = [self.position_embedding(~mask, dtype=feature.dtype) for feature, mask in features]
        return features, positions


def build_backbone_body(config) -> nn.Module:
    """The backbone network described by a ``DeformableDetrConfig`` (random or cached ImageNet weights).

    ResNets 18/34/50/101 come from torchvision; other names (or DC5 on basic-block ResNets) from timm.
    The stem and ``layer1`` are not trained, as in the paper.
    """
    if config.backbone_config is not None:
        return _resnet_from_transformers_config(config)
    kwargs = dict(config.backbone_kwargs or {})
    out_indices = tuple(kwargs.pop("out_indices", config.out_indices))
    num_channels = int(kwargs.pop("in_chans", config.num_channels))
    output_stride = int(kwargs.pop("output_stride", 16 if config.dilation else 32))
    if config.dilation and output_stride == 32:
        output_stride = 16
    name = config.backbone
    basic_dilated = name in _BASIC_BLOCK_RESNETS and output_stride != 32
    if name in TORCHVISION_RESNETS and not basic_dilated and not kwargs:
        body = ResNetBody(name, out_indices, output_stride, num_channels, pretrained=config.use_pretrained_backbone)
    else:
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        body = timm_body(name, out_indices, num_channels, pretrained=config.use_pretrained_backbone, **kwargs)
    if "resnet" in name:
        for parameter_name, parameter in body.named_parameters():
            if not any(stage in parameter_name for stage in ("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)
    return body


# ------------------------------------------------------------------ transformers' own ResNet
# ``use_timm_backbone=False`` checkpoints hold transformers' ResNet, which computes the same
# function as torchvision's (stride in the 3x3 convolution) under other parameter names. We build
# torchvision's and rename the keys on load and save (``models.checkpoints``).
_HF_RESNET_DEFAULTS = {
    "num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
}


def _resnet_from_transformers_config(config) -> "ResNetBody":
    import torchvision

    settings = {**_HF_RESNET_DEFAULTS, **config.backbone_config}
    if settings.get("model_type", "resnet") != "resnet":
        raise NotImplementedError(f"backbone_config of model_type {settings.get('model_type')!r} is not supported; only transformers' 'resnet'")
    bottleneck = settings["layer_type"] == "bottleneck"
    widths = [256, 512, 1024, 2048] if bottleneck else [64, 128, 256, 512]
    unsupported = {
        "hidden_sizes": list(settings["hidden_sizes"]) != widths,
        "embedding_size": settings["embedding_size"] != 64,
        "depths": len(settings["depths"]) != 4,
        "hidden_act": settings["hidden_act"] != "relu",
        "downsample_in_first_stage": bool(settings["downsample_in_first_stage"]),
        "downsample_in_bottleneck": bool(settings["downsample_in_bottleneck"]),
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise NotImplementedError(f"backbone_config fields {bad} describe a ResNet torchvision cannot build; supported: standard widths {widths}, 4 stages, relu, stride in the 3x3 convolution")
    if config.use_pretrained_backbone:
        raise ValueError("use_pretrained_backbone=True with a transformers ResNet backbone_config needs the hub; build with use_pretrained_backbone=False and load a checkpoint")
    block = torchvision.models.resnet.Bottleneck if bottleneck else torchvision.models.resnet.BasicBlock
    name = "resnet50" if bottleneck else "resnet18"
    body = ResNetBody(name, config.out_indices, 32, int(settings["num_channels"]), pretrained=False,
                      network=torchvision.models.resnet.ResNet(block, list(settings["depths"])))
    for parameter_name, parameter in body.named_parameters():
        if not any(stage in parameter_name for stage in ("layer2", "layer3", "layer4")):
            parameter.requires_grad_(False)
    return body


_HF_TO_TORCHVISION = (
    (r"^embedder\.embedder\.convolution\.", lambda m: "conv1."),
    (r"^embedder\.embedder\.normalization\.", lambda m: "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
)
_TORCHVISION_TO_HF = (
    (r"^conv1\.", lambda m: "embedder.embedder.convolution."),
    (r"^bn1\.", lambda m: "embedder.embedder.normalization."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization."),
)


def _rename(key: str, rules) -> str:
    import re

    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def hf_resnet_key_to_torchvision(key: str) -> str:
    """A backbone-relative key of transformers' ResNet in torchvision's naming:
    ``embedder.embedder.convolution.weight`` → ``conv1.weight``,
    ``encoder.stages.S.layers.B.layer.K.normalization.bias`` → ``layer{S+1}.B.bn{K+1}.bias``, ..."""
    return _rename(key, _HF_TO_TORCHVISION)


def torchvision_key_to_hf_resnet(key: str) -> str:
    """The inverse of ``hf_resnet_key_to_torchvision``."""
    return _rename(key, _TORCHVISION_TO_HF)
