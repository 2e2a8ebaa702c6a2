"""transformers' own ResNet (``use_timm_backbone=False`` checkpoints).

It computes the same function as torchvision's (stride in the 3x3 convolution) under other
parameter names: we build torchvision's network, and its state dict speaks transformers' names
(``use_transformers_key_names``), so that every way of saving — ``save_pretrained``, a plain
``state_dict()``, ``transformers.Trainer`` — writes a checkpoint ``transformers`` reads whole, and
``load_state_dict`` takes either naming.
"""

from __future__ import annotations

import re
from typing import Any

import torchvision

from models.backbones.resnet import ResNetBody, freeze_stem

_HF_RESNET_DEFAULTS = {
    "num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
}


def resnet_from_transformers_config(config: Any) -> ResNetBody:
    """A torchvision ResNet body equal to the transformers ResNet of ``config.backbone_config``."""
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
    return use_transformers_key_names(freeze_stem(body))


def _to_transformers_names(module: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        renamed = prefix + torchvision_key_to_hf_resnet(key[len(prefix):])
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


def _from_transformers_names(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        renamed = prefix + hf_resnet_key_to_torchvision(key[len(prefix):])
        if renamed != key:
            state_dict[renamed] = state_dict.pop(key)


def use_transformers_key_names(body: Any) -> Any:
    """Make ``body`` (a torchvision ResNet body) list its state in transformers' ResNet names
    (``embedder.embedder.convolution.weight``, ``encoder.stages.S.layers.B.layer.K...``) and load
    either naming; its parameters keep torchvision's names. Returns ``body``."""
    body.register_state_dict_post_hook(_to_transformers_names)
    body.register_load_state_dict_pre_hook(_from_transformers_names)
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
