"""``prepare_for_inference(model)``: RT-DETR in its inference form, in place.

RT-DETR is designed to be re-parameterized for deployment; in eval mode these steps compute the
same function (to float rounding, about 1e-6 on the logits) with fewer and faster kernels:

1. every ``RepVggBlock`` of the CCFM becomes one 3x3 convolution with bias
   (``detr_blocks.fuse_repvgg_blocks``: the 1x1 branch and both batch norms folded in);
2. every remaining batch norm that follows a convolution (the ResNet-vd body's frozen ones, the
   input projections' and the CCFM conv-norm layers') is folded into that convolution
   (``models.backbones.frozen_batch_norm.fold_batch_norms``);
3. convolution weights are stored channels-last, so that oneDNN runs the whole CNN part in NHWC
   without reordering at every layer; the maps the encoder and decoder flatten come out already
   token-major (``[B, H·W, C]`` is then a view).

The result has no batch norms left to train: the function refuses a model in training mode, and
a prepared model should not be trained or saved as a checkpoint for training (its state dict has
folded weights under the convolutions' names and no ``norm`` entries). Calling it again does
nothing more.
"""

from __future__ import annotations

import torch
from torch import nn

from detr_blocks.repvgg import fuse_repvgg_blocks
from models.backbones.frozen_batch_norm import fold_batch_norms
from models.rt_detr.query_selection import GridAnchorQuerySelection


def prepare_for_inference(model: nn.Module, *, channels_last: bool = True, detections_only: bool = False) -> nn.Module:
    """Fuse RepVGG blocks, fold batch norms into their convolutions and (``channels_last``) store
    convolution weights channels-last, in place. Returns ``model``.

    Args:
        model: an ``RTDetrForObjectDetection`` or ``RTDetrModel`` (or any module holding RT-DETR
            parts) in eval mode (``model.eval()`` first).
        channels_last: also convert the convolution weights to ``torch.channels_last``.
        detections_only: the query selection's box head runs on the selected tokens only, so
            ``enc_outputs_coord_logits`` (every token's proposal box) is None; the detections and
            every other output are unchanged (``GridAnchorQuerySelection.token_boxes``).

    Outputs of the prepared model equal the unprepared model's in eval mode to float rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(
            f"model must be in eval mode (call model.eval() first): prepare_for_inference folds batch norms, "
            f"which changes training; in training mode: {', '.join(training[:3])}{' ...' if len(training) > 3 else ''}"
        )
    if not isinstance(detections_only, bool):
        raise TypeError(f"detections_only must be a bool, got {detections_only!r}")
    fuse_repvgg_blocks(model)
    fold_batch_norms(model)
    if channels_last:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
    if detections_only:
        for module in model.modules():
            if isinstance(module, GridAnchorQuerySelection):
                module.token_boxes = False
    return model.eval()  # the new convolutions are built in training mode
