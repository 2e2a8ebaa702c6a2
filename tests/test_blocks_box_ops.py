"""Box ops against direct fp64 formulas (written per pair in plain Python) and torchvision."""

import itertools

import pytest
import torch
import torchvision.ops

from detr_blocks import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou


def random_xyxy(n, generator, dtype=torch.float64):
    corner = torch.rand(n, 2, generator=generator, dtype=dtype)
    size = torch.rand(n, 2, generator=generator, dtype=dtype) * 0.6
    return torch.cat([corner, corner + size], -1)


def giou_by_hand(a, b):
    """GIoU of two xyxy boxes, from the definition, in Python floats."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    area_a = (ax1 - ax0) * (ay1 - ay0)
    area_b = (bx1 - bx0) * (by1 - by0)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = area_a + area_b - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union, inter / union - (hull - union) / hull


@pytest.mark.parametrize("shape", [(7,), (2, 3), ()])
def test_conversions_round_trip(shape):
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(*shape, 4, generator=generator, dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(boxes)
    cx, cy, w, h = boxes.unbind(-1)
    torch.testing.assert_close(xyxy, torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), boxes)
    torch.testing.assert_close(box_area(xyxy), w * h)


@pytest.mark.parametrize("n,m", [(1, 1), (5, 3), (4, 9)])
def test_iou_and_giou_match_definition(n, m):
    generator = torch.Generator().manual_seed(n * 10 + m)
    a, b = random_xyxy(n, generator), random_xyxy(m, generator)
    b[0] = a[0]  # identical pair: IoU = GIoU = 1
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (n, m)
    for i, j in itertools.product(range(n), range(m)):
        expected_iou, expected_giou = giou_by_hand(a[i].tolist(), b[j].tolist())
        assert iou[i, j].item() == pytest.approx(expected_iou, abs=1e-12)
        assert giou[i, j].item() == pytest.approx(expected_giou, abs=1e-12)
    assert giou[0, 0].item() == pytest.approx(1.0)
    torch.testing.assert_close(giou, torchvision.ops.generalized_box_iou(a, b))
    torch.testing.assert_close(iou, torchvision.ops.box_iou(a, b))


def test_aligned_equals_diagonal():
    generator = torch.Generator().manual_seed(3)
    a, b = random_xyxy(6, generator), random_xyxy(6, generator)
    torch.testing.assert_close(generalized_box_iou(a, b, aligned=True), torch.diagonal(generalized_box_iou(a, b)))
    torch.testing.assert_close(box_iou(a, b, aligned=True), torch.diagonal(box_iou(a, b)))


def test_disjoint_far_boxes_approach_minus_one():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1000.0, 1000.0, 1001.0, 1001.0]], dtype=torch.float64)
    assert generalized_box_iou(a, b).item() == pytest.approx(-1.0, abs=1e-5)


def test_giou_gradient_fp64():
    generator = torch.Generator().manual_seed(4)
    a = random_xyxy(3, generator).requires_grad_()
    b = random_xyxy(2, generator)
    assert torch.autograd.gradcheck(lambda x: generalized_box_iou(x, b), (a,))


@pytest.mark.parametrize("which", ["boxes1", "boxes2"])
@pytest.mark.parametrize("bad", [[0.5, 0.5, 0.4, 0.9], [0.1, 0.2, 0.3, float("nan")]])
def test_degenerate_boxes_raise_naming_argument(which, bad):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    broken = torch.tensor([bad])
    args = (broken, good) if which == "boxes1" else (good, broken)
    with pytest.raises(ValueError, match=which):
        generalized_box_iou(*args)


def test_shape_errors():
    with pytest.raises(ValueError, match="boxes"):
        box_cxcywh_to_xyxy(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="aligned"):
        generalized_box_iou(torch.zeros(3, 4), torch.zeros(2, 4), aligned=True)
    with pytest.raises(TypeError, match="boxes"):
        box_area([[0, 0, 1, 1]])
