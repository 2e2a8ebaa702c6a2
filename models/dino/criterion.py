"""DINO's training loss: Deformable DETR's set criterion plus the intermediate terms.

Terms (weights from the config; a suffix resolves to its base weight, see ``detr_blocks.weight_names``):
``loss_ce``, ``loss_bbox``, ``loss_giou`` of the last layer; ``_<i>`` of the earlier layers;
``_interm`` of the selected encoder proposals (class-aware, matched on their own; ``loss_ce_interm``
weighted by ``interm_loss_coefficient``). The denoising terms (``_dn``) are the denoising query
group's (``models.common.denoising_group``).
"""

from __future__ import annotations

from torch import nn

from detr_blocks.losses import SetCriterion
from models.dino.config import DinoConfig


class DinoCriterion(SetCriterion):
    """``SetCriterion`` with DINO's weights (its ``interm_outputs`` terms are ``SetCriterion``'s ``_interm``).

    Args:
        config: the weights, focal alpha and class count.
        matcher: the Hungarian matcher (costs from the config).
    """

    def __init__(self, config: DinoConfig, matcher: nn.Module) -> None:
        weights = {
            "loss_ce": float(config.class_loss_coefficient),
            "loss_bbox": float(config.bbox_loss_coefficient),
            "loss_giou": float(config.giou_loss_coefficient),
            "loss_ce_interm": float(config.class_loss_coefficient * config.interm_loss_coefficient),
        }
        super().__init__(config.num_labels, matcher, weight_dict=weights, focal_alpha=config.focal_alpha)
