"""Backbones shared by every model family: torchvision/timm ResNets with frozen batch norm, ResNet-vd
(RT-DETR's, ``transformers``' parameter names), and multi-level outputs with their padding masks and position embeddings.

``build_backbone_body(config)`` builds the network a config names; ``ConvEncoder`` adds the padding
mask at every output resolution; ``BackboneWithPositions`` adds a position embedding per map.
"""

from models.backbones.build import build_backbone_body
from models.backbones.multi_level import BackboneWithPositions, ConvEncoder, mask_to_size
from models.backbones.resnet import TORCHVISION_RESNETS, ResNetBody, freeze_stem
from models.backbones.resnet_vd import RESNET_VD_VARIANTS, ResNetVdBody, resnet_vd, resnet_vd_from_transformers_config

__all__ = [
    "RESNET_VD_VARIANTS",
    "TORCHVISION_RESNETS",
    "BackboneWithPositions",
    "ConvEncoder",
    "ResNetBody",
    "ResNetVdBody",
    "build_backbone_body",
    "freeze_stem",
    "mask_to_size",
    "resnet_vd",
    "resnet_vd_from_transformers_config",
]
