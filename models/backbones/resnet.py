"""ResNet bodies with frozen BatchNorm and multi-level outputs (torchvision's networks).

Module names follow ``torchvision``/``timm`` ResNets (``conv1``, ``bn1``, ``layer1`` ... ``layer4``),
which is also how the Hugging Face checkpoints name them under ``model.backbone.conv_encoder.model``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from models.backbones.frozen_batch_norm import fold_batch_norms, replace_batch_norm

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")

def _torchvision_weights_file(name: str) -> str:
    """Where ``torch.hub`` keeps the ImageNet weights of torchvision's ``name``."""
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)), weights.url


def _stage_width(stage: nn.Module) -> int:
    """Output channels of a ResNet stage: those of the last convolution of its last block."""
    return [module for module in stage[-1].modules() if isinstance(module, nn.Conv2d)][-1].out_channels


class ResNetBody(nn.Module):
    """The stages of a torchvision ResNet up to the last requested one, without pooling and fc.

    Args:
        name: one of ``TORCHVISION_RESNETS``.
        out_indices: stages (1-4) whose outputs ``forward`` returns.
        output_stride: 32 (plain), 16 (last stage dilated: DC5) or 8.
        num_channels: input channels.
        pretrained: load torchvision's ImageNet weights from the local torch hub cache.
        network: a prebuilt torchvision ``ResNet`` to take the stages from (any widths; the output
            channels are read from its stages).
    """

    def __init__(
        self, name: str, out_indices: Sequence[int], output_stride: int = 32, num_channels: int = 3, pretrained: bool = False, network: nn.Module | None = None
    ) -> None:
        super().__init__()
        if name not in TORCHVISION_RESNETS:
            raise ValueError(f"backbone must be one of {TORCHVISION_RESNETS} for the torchvision backbone, got {name!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if output_stride != 32 and name in BASIC_BLOCK_RESNETS:
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
        self.channels = [_stage_width(getattr(network, f"layer{stage}")) for stage in self.out_indices]
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


def freeze_stem(body: nn.Module) -> nn.Module:
    """Stop training the stem and ``layer1`` of a ResNet body, as the paper does (only ``layer2`` to
    ``layer4`` train). Returns ``body``."""
    for parameter_name, parameter in body.named_parameters():
        if not any(stage in parameter_name for stage in ("layer2", "layer3", "layer4")):
            parameter.requires_grad_(False)
    return body
