"""HungarianMatcher against brute force over permutations and transformers 4.57.6."""

import itertools

import pytest
import torch
import torchvision.ops
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

from detr_blocks import HungarianMatcher


def independent_cost(logits, pred, labels, boxes, weights=(2.0, 5.0, 2.0), alpha=0.25, gamma=2.0):
    """The paper's matching cost written out in fp64 with torchvision's GIoU."""
    p = logits.double().sigmoid()[:, labels]
    class_cost = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8) - (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)
    pred, boxes = pred.double(), boxes.double()
    l1 = (pred[:, None, :] - boxes[None, :, :]).abs().sum(-1)
    to_xyxy = lambda b: torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)
    giou = torchvision.ops.generalized_box_iou(to_xyxy(pred), to_xyxy(boxes))
    return weights[0] * class_cost + weights[1] * l1 - weights[2] * giou


def brute_force_min(cost):
    queries, targets = cost.shape
    if targets <= queries:
        return min(sum(cost[q, t].item() for t, q in enumerate(perm)) for perm in itertools.permutations(range(queries), targets))
    return min(sum(cost[q, t].item() for q, t in enumerate(perm)) for perm in itertools.permutations(range(targets), queries))


def random_problem(batch, queries, sizes, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "logits": torch.randn(batch, queries, classes, generator=generator) * 2,
        "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.2,
    }
    targets = [
        {"class_labels": torch.randint(0, classes, (n,), generator=generator), "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.2}
        for n in sizes
    ]
    return outputs, targets


@pytest.mark.parametrize(
    "queries,sizes,seed",
    [(5, [3, 5, 1], 0), (6, [4, 2], 1), (3, [5, 6], 2), (4, [0, 4], 3)],  # incl. more targets than queries, and none
)
def test_matching_is_optimal_by_brute_force(queries, sizes, seed):
    outputs, targets = random_problem(len(sizes), queries, sizes, 4, seed)
    matcher = HungarianMatcher(2.0, 5.0, 2.0)
    matches = matcher(outputs, targets)
    for b, (rows, cols) in enumerate(matches):
        n = sizes[b]
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(queries, n)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        if n == 0:
            continue
        cost = independent_cost(outputs["logits"][b], outputs["pred_boxes"][b], targets[b]["class_labels"], targets[b]["boxes"])
        torch.testing.assert_close(
            matcher.cost_matrix(outputs["logits"][b], outputs["pred_boxes"][b], targets[b]["class_labels"], targets[b]["boxes"]).double(),
            cost, rtol=1e-5, atol=1e-5,
        )
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min(cost), abs=1e-5)


def test_matches_transformers_matcher():
    outputs, targets = random_problem(3, 12, [4, 7, 2], 6, 10)
    ours = HungarianMatcher(1.0, 5.0, 2.0)(outputs, targets)
    theirs = DeformableDetrHungarianMatcher(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0)(outputs, targets)
    for (r1, c1), (r2, c2) in zip(ours, theirs):
        assert r1.tolist() == r2.tolist() and c1.tolist() == c2.tolist()


def test_half_precision_predictions_are_matched_in_fp32():
    outputs, targets = random_problem(2, 6, [3, 4], 4, 11)
    half = {k: v.half() for k, v in outputs.items()}
    matcher = HungarianMatcher()
    cost = matcher.cost_matrix(half["logits"][0], half["pred_boxes"][0], targets[0]["class_labels"], targets[0]["boxes"])
    assert cost.dtype == torch.float32
    expected = independent_cost(half["logits"][0].float(), half["pred_boxes"][0].float(), targets[0]["class_labels"], targets[0]["boxes"])
    torch.testing.assert_close(cost.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(matcher(half, targets)[1][0]) == 4


def test_all_empty_targets():
    outputs, targets = random_problem(2, 5, [0, 0], 3, 4)
    for rows, cols in HungarianMatcher()(outputs, targets):
        assert rows.numel() == cols.numel() == 0


@pytest.mark.parametrize("key,bad", [("logits", float("nan")), ("pred_boxes", float("nan")), ("pred_boxes", float("inf"))])
def test_nan_or_inf_predictions_raise_a_clear_error(key, bad):
    outputs, targets = random_problem(2, 4, [2, 2], 3, 5)
    outputs[key][1, 2, 0] = bad
    with pytest.raises(ValueError, match=rf"image 1.*{key}.*(NaN|inf).*diverged") as caught:
        HungarianMatcher()(outputs, targets)
    assert isinstance(caught.value, FloatingPointError)  # what a training loop's divergence check catches


def test_nan_cost_from_zero_size_boxes_raises():
    outputs, targets = random_problem(1, 3, [1], 3, 6)
    outputs["pred_boxes"][0, :, 2:] = 0.0
    targets[0]["boxes"][0, 2:] = 0.0
    with pytest.raises(ValueError, match="NaN/inf.*GIoU") as caught:
        HungarianMatcher()(outputs, targets)
    assert not isinstance(caught.value, FloatingPointError)  # degenerate targets, not a diverged model


def test_argument_errors():
    outputs, targets = random_problem(2, 4, [2, 2], 3, 7)
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="targets must be a list of 2"):
        HungarianMatcher()(outputs, targets[:1])
    targets[0]["class_labels"][0] = 3
    with pytest.raises(ValueError, match=r"targets\[0\]\['class_labels'\]"):
        HungarianMatcher()(outputs, targets)
    with pytest.raises(ValueError, match="pred_boxes"):
        HungarianMatcher()({"logits": outputs["logits"]}, targets)
