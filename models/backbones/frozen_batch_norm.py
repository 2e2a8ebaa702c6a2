"""Frozen batch norm: BatchNorm2d replaced by torchvision's FrozenBatchNorm2d, and folded into the
preceding convolution for inference."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


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
