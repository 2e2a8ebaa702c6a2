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


# convolution name → the name of the norm that follows it: ResNet's ``convN``/``bnN``, ResNet-vd's
# ``convolution``/``normalization`` (``ConvBnReLU``), ``detr_blocks.ConvNormLayer``'s ``conv``/``norm``
_NORM_AFTER = {"convolution": ("normalization",), "conv": ("norm", "bn")}


def _foldable(norm: object) -> bool:
    """A norm whose function is a fixed per-channel affine map: frozen, or a BatchNorm2d in eval
    mode with running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_mean is not None


def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """``norm(conv(x))`` as one convolution: weight scaled per output channel, bias shifted."""
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    shift = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight * (norm.running_var + norm.eps).rsqrt()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                       bias=True, padding_mode=conv.padding_mode)
    folded = folded.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        folded.bias.copy_((bias - norm.running_mean) * scale + shift)
    folded.requires_grad_(False)
    return folded


def _norm_names(conv_name: str) -> tuple[str, ...]:
    if conv_name in _NORM_AFTER:
        return _NORM_AFTER[conv_name]
    return ("bn" + conv_name[len("conv"):],) if conv_name.startswith("conv") else ()


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place, for inference: replace each convolution followed by a frozen batch norm (or an
    eval-mode ``BatchNorm2d``) by one convolution with bias, and the norm by an ``nn.Identity``.

    Pairs found: ``convN`` + ``bnN`` (ResNet), ``convolution`` + ``normalization`` (ResNet-vd),
    ``conv`` + ``norm`` (``detr_blocks.ConvNormLayer``), and ``Sequential(Conv2d, norm)``.
    A ``BatchNorm2d`` in training mode is left alone (its function depends on the batch).
    Folding twice does nothing more. Returns ``module``."""
    for child in list(module.modules()):
        for name, conv in list(child.named_children()):
            if not isinstance(conv, nn.Conv2d):
                continue
            for norm_name in _norm_names(name):
                norm = getattr(child, norm_name, None)
                if isinstance(norm, nn.Module) and _foldable(norm):
                    setattr(child, name, _fold(conv, norm))
                    setattr(child, norm_name, nn.Identity())
                    break
        if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[0], nn.Conv2d) and _foldable(child[1]):
            child[0] = _fold(child[0], child[1])
            child[1] = nn.Identity()
    return module
