"""RT-DETR's grid anchors and varifocal loss against ``transformers`` 4.57.6: anchors equal to
``RTDetrModel.generate_anchors``; ``loss_vfl`` equal to ``RTDetrLoss.loss_labels_vfl`` with the same
matching, and the whole final-layer loss (matcher, VFL, L1, GIoU) equal to ``RTDetrLoss``."""

from __future__ import annotations

import pytest
import torch
from transformers import RTDetrConfig
from transformers.loss.loss_rt_detr import RTDetrLoss
from transformers.models.rt_detr import modeling_rt_detr as hf

from detr_blocks import HungarianMatcher, SetCriterion, VarifocalLoss, grid_anchors, varifocal_loss


class _NoModel:
    """Stands in for ``self`` of ``RTDetrModel.generate_anchors``, which reads nothing from it when
    ``spatial_shapes`` is given (its cache needs a hashable object)."""

    config = None


@pytest.mark.parametrize(("shapes", "grid_size", "dtype"), [
    (((8, 6), (4, 3), (2, 2)), 0.05, torch.float32),
    (((5, 7), (3, 4)), 0.2, torch.float64),   # large boxes: levels ≥ 2 invalid everywhere
    (((1, 1),), 0.05, torch.float32),
])
def test_grid_anchors_match_transformers(shapes, grid_size, dtype):
    expected_anchors, expected_valid = hf.RTDetrModel.generate_anchors(_NoModel(), spatial_shapes=shapes, grid_size=grid_size, dtype=dtype)
    anchors, valid = grid_anchors(shapes, grid_size, dtype=dtype)
    assert anchors.dtype == dtype and valid.dtype == torch.bool
    torch.testing.assert_close(valid, expected_valid)
    torch.testing.assert_close(anchors, expected_anchors)
    tensor_shapes, _ = grid_anchors(torch.tensor(shapes), grid_size, dtype=dtype)
    torch.testing.assert_close(tensor_shapes, anchors)


def test_grid_anchors_name_bad_arguments():
    with pytest.raises(ValueError, match="spatial_shapes"):
        grid_anchors([(0, 3)])
    with pytest.raises(ValueError, match="grid_size"):
        grid_anchors([(2, 3)], grid_size=0)
    with pytest.raises(ValueError, match="eps"):
        grid_anchors([(2, 3)], eps=0.5)
    with pytest.raises(ValueError, match="dtype"):
        grid_anchors([(2, 3)], dtype=torch.int64)


def _problem(seed: int, num_classes: int = 5, queries: int = 7, counts=(3, 0, 2)):
    generator = torch.Generator().manual_seed(seed)

    def boxes(n):
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        return torch.cat([centre, torch.rand(n, 2, generator=generator) * 0.3 + 0.05], -1)

    outputs = {"logits": torch.randn(len(counts), queries, num_classes, generator=generator, requires_grad=True),
               "pred_boxes": boxes(len(counts) * queries).view(len(counts), queries, 4)}
    targets = [{"class_labels": torch.randint(num_classes, (n,), generator=generator), "boxes": boxes(n)} for n in counts]
    indices = [(torch.randperm(queries, generator=generator)[:n], torch.randperm(n, generator=generator)) for n in counts]
    return outputs, targets, indices


def _their_loss(num_classes: int, **overrides) -> RTDetrLoss:
    return RTDetrLoss(RTDetrConfig(num_labels=num_classes, **overrides))


@pytest.mark.parametrize(("alpha", "gamma", "num_boxes"), [(0.75, 2.0, 5.0), (0.5, 1.5, 2.0)])
def test_varifocal_term_matches_transformers_with_the_same_matching(alpha, gamma, num_boxes):
    outputs, targets, indices = _problem(0)
    theirs = _their_loss(5, focal_loss_alpha=alpha, focal_loss_gamma=gamma).loss_labels_vfl(outputs, targets, indices, num_boxes)["loss_vfl"]
    (their_grad,) = torch.autograd.grad(theirs, outputs["logits"])
    ours = VarifocalLoss(alpha, gamma)(outputs, targets, indices, num_boxes)["loss_vfl"]
    (our_grad,) = torch.autograd.grad(ours, outputs["logits"])
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_grad, their_grad)

    criterion = SetCriterion(5, weight_dict={"loss_vfl": 1.0}, losses=("vfl",), extra_losses={"vfl": VarifocalLoss(alpha, gamma)})
    through_criterion = criterion.losses_for(outputs, targets, num_boxes, indices=indices)
    torch.testing.assert_close(through_criterion["loss_vfl"], theirs)


def test_final_layer_loss_matches_rt_detr_loss():
    """Matching included: our ``HungarianMatcher`` with RT-DETR's costs, VFL, L1 and GIoU, weighted
    as RT-DETR's config (``RTDetrLoss`` returns weighted terms)."""
    outputs, targets, _ = _problem(1, counts=(2, 4))
    config = RTDetrConfig(num_labels=5)
    theirs = RTDetrLoss(config)({k: v for k, v in outputs.items()}, targets)
    weights = {"loss_vfl": config.weight_loss_vfl, "loss_bbox": config.weight_loss_bbox, "loss_giou": config.weight_loss_giou}
    criterion = SetCriterion(
        5,
        HungarianMatcher(config.matcher_class_cost, config.matcher_bbox_cost, config.matcher_giou_cost, config.matcher_alpha, config.matcher_gamma),
        weight_dict=weights,
        losses=("vfl", "boxes"),
        extra_losses={"vfl": VarifocalLoss(config.focal_loss_alpha, config.focal_loss_gamma)},
    )
    total, ours = criterion(outputs, targets)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        torch.testing.assert_close(weights[name] * ours[name], value)
    torch.testing.assert_close(total, sum(theirs.values()))


def test_varifocal_loss_formula_and_errors():
    logits = torch.randn(4, 3, dtype=torch.float64)
    scores = torch.rand(4, 3, dtype=torch.float64) * (torch.rand(4, 3) > 0.5)
    positives = (scores > 0).double()
    p = logits.sigmoid()
    bce = -(scores * p.log() + (1 - scores) * (1 - p).log())
    expected = (0.75 * p**2 * (1 - positives) + scores) * bce
    torch.testing.assert_close(varifocal_loss(logits, scores, positives), expected)
    with pytest.raises(ValueError, match="scores"):
        varifocal_loss(logits, scores[:2], positives)
    with pytest.raises(ValueError, match="positives"):
        varifocal_loss(logits, scores, positives[:, :1])
    with pytest.raises(ValueError, match="gamma"):
        VarifocalLoss(gamma=-1.0)
