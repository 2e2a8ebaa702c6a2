"""ResNet-vd (He et al., "Bag of Tricks", 2019; RT-DETR's backbone): a ResNet with

- a deep stem: three 3x3 conv-BN-ReLU (stride 2, 1, 1; widths E/2, E/2, E) then a 3x3 max-pool,
  instead of one 7x7 convolution;
- average-pool downsampling on the shortcut: where a block halves the resolution its shortcut is a
  2x2 average pool (ceil mode) followed by a stride-1 1x1 conv-BN, instead of a stride-2 1x1 conv
  that would skip three pixels out of four;
- bottleneck blocks stride in the 3x3 convolution (``downsample_in_bottleneck=False``, the vd
  default) or in the first 1x1.

The state dict uses ``transformers``' ``RTDetrResNetBackbone`` names
(``embedder.embedder.{0,1,2}.{convolution,normalization}``, ``encoder.stages.S.layers.B.{layer.K,
shortcut}...``), so its checkpoints load unchanged. Like our other bodies it returns a list of maps
and lists their ``channels`` and ``strides`` (what ``ConvEncoder`` expects).

Where ``transformers`` differs: its basic blocks apply the average pool whenever the first block of
a stage changes width, even at stride 1 (a shape error), and its inner convolutions use ReLU
whatever ``hidden_act`` says; here a basic block pools when it both downsamples and changes width
(every published size), and ``hidden_act`` must be ReLU. A configuration only ``transformers``
expresses (a stride-2 first stage of basic blocks without a width change: a stride-2 1x1
projection) follows ``transformers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones.frozen_batch_norm import replace_batch_norm

# name → (block type, depths); widths: basic [64, 128, 256, 512], bottleneck [256, 512, 1024, 2048]
RESNET_VD_VARIANTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18vd": ("basic", (2, 2, 2, 2)),
    "resnet34vd": ("basic", (3, 4, 6, 3)),
    "resnet50vd": ("bottleneck", (3, 4, 6, 3)),
    "resnet101vd": ("bottleneck", (3, 4, 23, 3)),
}
DEFAULT_WIDTHS = {"basic": (64, 128, 256, 512), "bottleneck": (256, 512, 1024, 2048)}
BOTTLENECK_REDUCTION = 4


class ConvBnReLU(nn.Module):
    """``relu(normalization(convolution(x)))`` (``relu=False``: no activation); padding k // 2, no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU() if relu else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_state)))


class Projection(nn.Module):
    """The shortcut's 1x1 conv-BN (``convolution``, ``normalization``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(hidden_state))


def _pooled(projection: nn.Module) -> nn.Sequential:
    """The vd shortcut of a downsampling block: 2x2 average pool (ceil mode), then ``projection``."""
    return nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), projection)


class ResidualBlock(nn.Module):
    """``relu(layer(x) + shortcut(x))``; ``layer`` a Sequential of ``ConvBnReLU``, the last without ReLU."""

    def __init__(self, layer: nn.Sequential, shortcut: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.layer = layer
        self.activation = nn.ReLU()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(hidden_state) + self.shortcut(hidden_state))


def basic_block(in_channels: int, out_channels: int, stride: int, first: bool) -> ResidualBlock:
    """Two 3x3 convolutions. The first block of a stage always has a projection shortcut (the
    RT-DETR authors' choice, kept for their checkpoints), pooled when it downsamples and changes width."""
    if not first:
        shortcut: nn.Module = nn.Identity()
    elif stride == 2 and in_channels != out_channels:
        shortcut = _pooled(Projection(in_channels, out_channels))
    else:
        shortcut = Projection(in_channels, out_channels, stride)
    layer = nn.Sequential(ConvBnReLU(in_channels, out_channels, 3, stride), ConvBnReLU(out_channels, out_channels, 3, 1, relu=False))
    return ResidualBlock(layer, shortcut)


def bottleneck_block(in_channels: int, out_channels: int, stride: int, downsample_in_bottleneck: bool) -> ResidualBlock:
    """1x1 reduce (÷4), 3x3, 1x1 expand; the stride in the 3x3 (or, ``downsample_in_bottleneck``, in
    the first 1x1); the shortcut pooled when the block downsamples, projected when shapes differ."""
    if stride == 2:
        shortcut: nn.Module = _pooled(Projection(in_channels, out_channels))
    elif in_channels != out_channels:
        shortcut = Projection(in_channels, out_channels)
    else:
        shortcut = nn.Identity()
    hidden = out_channels // BOTTLENECK_REDUCTION
    layer = nn.Sequential(
        ConvBnReLU(in_channels, hidden, 1, stride if downsample_in_bottleneck else 1),
        ConvBnReLU(hidden, hidden, 3, 1 if downsample_in_bottleneck else stride),
        ConvBnReLU(hidden, out_channels, 1, relu=False),
    )
    return ResidualBlock(layer, shortcut)


class DeepStem(nn.Module):
    """Three 3x3 conv-BN-ReLU (stride 2, 1, 1) then a 3x3 stride-2 max-pool: stride 4, ``embedding_size`` channels."""

    def __init__(self, num_channels: int, embedding_size: int) -> None:
        super().__init__()
        half = embedding_size // 2
        self.embedder = nn.Sequential(ConvBnReLU(num_channels, half, 3, 2), ConvBnReLU(half, half, 3, 1), ConvBnReLU(half, embedding_size, 3, 1))
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.embedder(pixel_values))


class Stage(nn.Module):
    """Residual blocks applied in order (``layers``)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*blocks)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_state)


class Stages(nn.Module):
    """The stages (``stages``), held under ``encoder`` as ``transformers`` does."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)


def _positive_ints(name: str, values: Sequence[int], length: int | None = None) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else ()
    if not values or (length is not None and len(values) != length) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be {'a sequence' if length is None else f'{length}'} positive ints, got {values!r}")
    return values


class ResNetVdBody(nn.Module):
    """A ResNet-vd body returning the maps of ``out_indices``.

    Args:
        depths: blocks per stage (e.g. ``(2, 2, 2, 2)`` for R18-vd, ``(3, 4, 6, 3)`` for R50-vd).
        layer_type: ``"basic"`` (two 3x3) or ``"bottleneck"`` (1x1, 3x3, 1x1).
        hidden_sizes: output channels per stage; default ``DEFAULT_WIDTHS[layer_type]`` (four stages).
        embedding_size: stem channels, even.
        num_channels: input channels.
        out_indices: maps to return, ``0`` = the stem (stride 4), ``s`` = stage s; increasing.
            RT-DETR: ``(2, 3, 4)``.
        downsample_in_first_stage: stride 2 in the first stage too.
        downsample_in_bottleneck: stride in the first 1x1 instead of the 3x3 (bottleneck only).
        freeze_batch_norm: BatchNorm2d replaced by ``FrozenBatchNorm2d`` (RT-DETR's
            ``freeze_backbone_batch_norms``, default True); its state dict has no ``num_batches_tracked``.

    Attributes: ``channels`` and ``strides`` of the returned maps. Submodules: ``embedder``
    (``DeepStem``), ``encoder.stages`` (``transformers``' names).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        layer_type: str = "bottleneck",
        hidden_sizes: Sequence[int] | None = None,
        embedding_size: int = 64,
        num_channels: int = 3,
        out_indices: Sequence[int] = (2, 3, 4),
        *,
        downsample_in_first_stage: bool = False,
        downsample_in_bottleneck: bool = False,
        freeze_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if layer_type not in DEFAULT_WIDTHS:
            raise ValueError(f"layer_type must be one of {sorted(DEFAULT_WIDTHS)}, got {layer_type!r}")
        depths = _positive_ints("depths", depths)
        hidden_sizes = _positive_ints("hidden_sizes", DEFAULT_WIDTHS[layer_type] if hidden_sizes is None else hidden_sizes, len(depths))
        (embedding_size,) = _positive_ints("embedding_size", [embedding_size])
        (num_channels,) = _positive_ints("num_channels", [num_channels])
        if embedding_size % 2:
            raise ValueError(f"embedding_size must be even (the stem's first convolutions have half of it), got {embedding_size}")
        if layer_type == "bottleneck" and any(width % BOTTLENECK_REDUCTION for width in hidden_sizes):
            raise ValueError(f"hidden_sizes of bottleneck stages must be divisible by {BOTTLENECK_REDUCTION}, got {list(hidden_sizes)}")
        out_indices = tuple(out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not all(isinstance(i, int) and 0 <= i <= len(depths) for i in out_indices):
            raise ValueError(f"out_indices must be increasing ints in [0, {len(depths)}] (0 = stem), got {list(out_indices)}")

        self.embedder = DeepStem(num_channels, embedding_size)
        stages, strides = [], [4]
        in_channels = embedding_size
        for index, (depth, width) in enumerate(zip(depths, hidden_sizes)):
            stride = 2 if index > 0 or downsample_in_first_stage else 1
            if layer_type == "basic":
                blocks = [basic_block(in_channels if b == 0 else width, width, stride if b == 0 else 1, b == 0) for b in range(depth)]
            else:
                blocks = [bottleneck_block(in_channels if b == 0 else width, width, stride if b == 0 else 1, downsample_in_bottleneck) for b in range(depth)]
            stages.append(Stage(blocks))
            strides.append(strides[-1] * stride)
            in_channels = width
        self.encoder = Stages(stages)
        if freeze_batch_norm:
            replace_batch_norm(self)
        all_channels = [embedding_size, *hidden_sizes]
        self.out_indices = out_indices
        self.channels = [all_channels[i] for i in out_indices]
        self.strides = [strides[i] for i in out_indices]

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[B, num_channels, H, W]`` → one ``[B, channels[i], ⌈H/strides[i]⌉, ⌈W/strides[i]⌉]`` map
        per ``out_indices`` entry."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.embedder.embedder[0].convolution.in_channels:
            raise ValueError(f"pixel_values must have shape [B, {self.embedder.embedder[0].convolution.in_channels}, H, W], got {tuple(pixel_values.shape)}")
        hidden_state = self.embedder(pixel_values)
        features = [hidden_state] if 0 in self.out_indices else []
        for index, stage in enumerate(self.encoder.stages[: max(self.out_indices)], start=1):
            hidden_state = stage(hidden_state)
            if index in self.out_indices:
                features.append(hidden_state)
        return features


def resnet_vd(name: str, out_indices: Sequence[int] = (2, 3, 4), **kwargs: Any) -> ResNetVdBody:
    """A published size by name (``RESNET_VD_VARIANTS``: resnet18vd, resnet34vd, resnet50vd,
    resnet101vd) with its standard widths; ``kwargs`` go to ``ResNetVdBody``."""
    if name not in RESNET_VD_VARIANTS:
        raise ValueError(f"name must be one of {sorted(RESNET_VD_VARIANTS)}, got {name!r}")
    layer_type, depths = RESNET_VD_VARIANTS[name]
    return ResNetVdBody(depths, layer_type, out_indices=out_indices, **kwargs)


def resnet_vd_from_transformers_config(backbone_config: Any, *, freeze_batch_norm: bool = True) -> ResNetVdBody:
    """The body of a ``transformers`` ``RTDetrResNetConfig`` (or its ``to_dict()``): ``depths``,
    ``layer_type``, ``hidden_sizes``, ``embedding_size``, ``num_channels``, ``out_indices``,
    ``downsample_in_first_stage``, ``downsample_in_bottleneck``; ``hidden_act`` must be ``"relu"``."""
    fields: Mapping[str, Any] = backbone_config if isinstance(backbone_config, Mapping) else backbone_config.to_dict()
    if fields.get("model_type", "rt_detr_resnet") != "rt_detr_resnet":
        raise ValueError(f"backbone_config must describe an rt_detr_resnet, got model_type {fields.get('model_type')!r}")
    if fields.get("hidden_act", "relu") != "relu":
        raise ValueError(f"backbone_config.hidden_act must be 'relu' (ResNet-vd), got {fields.get('hidden_act')!r}")
    out_indices = fields.get("out_indices") or [len(fields.get("depths", (3, 4, 6, 3)))]
    return ResNetVdBody(
        tuple(fields.get("depths", (3, 4, 6, 3))),
        fields.get("layer_type", "bottleneck"),
        tuple(fields.get("hidden_sizes", DEFAULT_WIDTHS[fields.get("layer_type", "bottleneck")])),
        fields.get("embedding_size", 64),
        fields.get("num_channels", 3),
        tuple(out_indices),
        downsample_in_first_stage=bool(fields.get("downsample_in_first_stage", False)),
        downsample_in_bottleneck=bool(fields.get("downsample_in_bottleneck", False)),
        freeze_batch_norm=freeze_batch_norm,
    )
