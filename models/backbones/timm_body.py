"""Backbones from ``timm`` (optional dependency), with frozen BatchNorm."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from models.backbones.frozen_batch_norm import replace_batch_norm
from models.backbones.resnet import TORCHVISION_RESNETS


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
