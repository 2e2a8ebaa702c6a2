"""Backbones shared by every model family: torchvision/timm ResNets with frozen batch norm, and
multi-level outputs with their padding masks and position embeddings.

``build_backbone_body(config)`` builds the network a config names; ``ConvEncoder`` adds the padding
mask at every output resolution; ``BackboneWithPositions`` adds a position embedding per map.
"""

from models.backbones.build import build_backbone_body
from models.backbones.multi_level import BackboneWithPositions, ConvEncoder, mask_to_size
from models.backbones.resnet import TORCHVISION_RESNETS, ResNetBody, freeze_stem

__all__ = ["TORCHVISION_RESNETS", "BackboneWithPositions", "ConvEncoder", "ResNetBody", "build_backbone_body", "freeze_stem", "mask_to_size"]
