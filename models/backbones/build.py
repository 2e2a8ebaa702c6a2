"""The backbone body a config describes: torchvision ResNets, timm models, or transformers' ResNet."""

from __future__ import annotations

from typing import Any

from torch import nn

from models.backbones.hf_resnet import resnet_from_transformers_config
from models.backbones.resnet import BASIC_BLOCK_RESNETS, TORCHVISION_RESNETS, ResNetBody, freeze_stem
from models.backbones.timm_body import timm_body


def build_backbone_body(config: Any) -> nn.Module:
    """The backbone network described by a config with the backbone fields of
    ``DeformableDetrConfig`` (``backbone``, ``backbone_config``, ``backbone_kwargs``, ``dilation``,
    ``out_indices``, ``num_channels``, ``use_pretrained_backbone``); random or cached ImageNet weights.

    ResNets 18/34/50/101 come from torchvision; other names (or DC5 on basic-block ResNets) from timm.
    The stem and ``layer1`` are not trained, as in the paper.
    """
    if config.backbone_config is not None:
        return resnet_from_transformers_config(config)
    kwargs = dict(config.backbone_kwargs or {})
    out_indices = tuple(kwargs.pop("out_indices", config.out_indices))
    num_channels = int(kwargs.pop("in_chans", config.num_channels))
    output_stride = int(kwargs.pop("output_stride", 16 if config.dilation else 32))
    if config.dilation and output_stride == 32:
        output_stride = 16
    name = config.backbone
    basic_dilated = name in BASIC_BLOCK_RESNETS and output_stride != 32
    if name in TORCHVISION_RESNETS and not basic_dilated and not kwargs:
        body = ResNetBody(name, out_indices, output_stride, num_channels, pretrained=config.use_pretrained_backbone)
    else:
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        body = timm_body(name, out_indices, num_channels, pretrained=config.use_pretrained_backbone, **kwargs)
    return freeze_stem(body) if "resnet" in name else body
