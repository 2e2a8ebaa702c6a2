"""Losses: focal and GIoU against fp64 formulas; SetCriterion against transformers 4.57.6."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers.loss.loss_deformable_detr import (
    DeformableDetrForObjectDetectionLoss,
    DeformableDetrHungarianMatcher,
    DeformableDetrImageLoss,
)

from detr_blocks import HungarianMatcher, SetCriterion, average_num_boxes, sigmoid_focal_loss

HF_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def problem(batch=3, queries=8, classes=5, sizes=(3, 0, 5), layers=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, batch, queries, classes, generator=generator) * 2
    boxes = torch.rand(layers, batch, queries, 4, generator=generator) * 0.5 + 0.2
    targets = [
        {"class_labels": torch.randint(0, classes, (n,), generator=generator), "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.2}
        for n in sizes
    ]
    return logits, boxes, targets


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.0), (-1.0, 2.0)])
def test_sigmoid_focal_loss_formula_fp64(alpha, gamma):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, generator=generator, dtype=torch.float64) * 4
    targets = (torch.rand(40, generator=generator) > 0.5).double()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma)
    for x, t, value in zip(logits.tolist(), targets.tolist(), ours.tolist()):
        p = 1 / (1 + math.exp(-x))
        if t == 1:
            expected = -math.log(p) * (1 - p) ** gamma * (alpha if alpha >= 0 else 1)
        else:
            expected = -math.log(1 - p) * p**gamma * ((1 - alpha) if alpha >= 0 else 1)
        assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_box_losses_fp64_by_hand():
    logits, boxes, targets = problem(layers=1, sizes=(2, 3, 1))
    logits, boxes = logits[0].double(), boxes[0].double()
    targets = [{"class_labels": t["class_labels"], "boxes": t["boxes"].double()} for t in targets]
    criterion = SetCriterion(5, losses=("boxes",))
    outputs = {"logits": logits, "pred_boxes": boxes}
    matches = criterion.matcher(outputs, targets)
    _, losses = criterion(outputs, targets)
    l1, giou_loss = 0.0, 0.0
    for b, (rows, cols) in enumerate(matches):
        for q, t in zip(rows.tolist(), cols.tolist()):
            p, g = boxes[b, q].tolist(), targets[b]["boxes"][t].tolist()
            l1 += sum(abs(x - y) for x, y in zip(p, g))
            a = [p[0] - p[2] / 2, p[1] - p[3] / 2, p[0] + p[2] / 2, p[1] + p[3] / 2]
            c = [g[0] - g[2] / 2, g[1] - g[3] / 2, g[0] + g[2] / 2, g[1] + g[3] / 2]
            inter = max(0, min(a[2], c[2]) - max(a[0], c[0])) * max(0, min(a[3], c[3]) - max(a[1], c[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (c[2] - c[0]) * (c[3] - c[1]) - inter
            hull = (max(a[2], c[2]) - min(a[0], c[0])) * (max(a[3], c[3]) - min(a[1], c[1]))
            giou_loss += 1 - (inter / union - (hull - union) / hull)
    assert losses["loss_bbox"].item() == pytest.approx(l1 / 6, rel=1e-10)
    assert losses["loss_giou"].item() == pytest.approx(giou_loss / 6, rel=1e-10)


@pytest.mark.parametrize("sizes", [(3, 0, 5), (1, 2, 8)])
def test_criterion_matches_transformers(sizes):
    logits, boxes, targets = problem(sizes=sizes)
    config = SimpleNamespace(
        class_cost=1, bbox_cost=5, giou_cost=2, num_labels=5, focal_alpha=0.25, auxiliary_loss=True,
        decoder_layers=3, bbox_loss_coefficient=5, giou_loss_coefficient=2,
    )
    expected_total, expected, _ = DeformableDetrForObjectDetectionLoss(logits[-1], targets, "cpu", boxes[-1], config, logits, boxes)
    criterion = SetCriterion(5, HungarianMatcher(1, 5, 2), weight_dict=HF_WEIGHTS)
    outputs = {
        "logits": logits[-1],
        "pred_boxes": boxes[-1],
        "auxiliary_outputs": [{"logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])],
    }
    total, losses = criterion(outputs, targets)
    assert set(expected) <= set(losses)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)
    torch.testing.assert_close(total, expected_total)
    assert set(losses) - set(expected) == {"class_error"}


def test_two_stage_encoder_loss_is_class_agnostic():
    logits, boxes, targets = problem(layers=2)
    criterion = SetCriterion(5, HungarianMatcher(1, 5, 2), weight_dict=HF_WEIGHTS)
    outputs = {"logits": logits[1], "pred_boxes": boxes[1], "enc_outputs": {"logits": logits[0], "pred_boxes": boxes[0]}}
    total, losses = criterion(outputs, targets)
    # reference: transformers' loss applied to the encoder outputs with every label set to 0
    reference = DeformableDetrImageLoss(DeformableDetrHungarianMatcher(1, 5, 2), 5, 0.25, ["labels", "boxes", "cardinality"])
    agnostic = [{"class_labels": torch.zeros_like(t["class_labels"]), "boxes": t["boxes"]} for t in targets]
    expected = reference({"logits": logits[0], "pred_boxes": boxes[0]}, agnostic)
    for name, value in expected.items():
        torch.testing.assert_close(losses[f"{name}_enc"], value, msg=name)
    main = {k: v for k, v in losses.items() if not k.endswith("_enc")}
    expected_total = sum(HF_WEIGHTS[k] * (main[k] + losses[k + "_enc"]) for k in HF_WEIGHTS)
    torch.testing.assert_close(total, expected_total)


def test_weights_by_full_name_override_base_name():
    logits, boxes, targets = problem(layers=2)
    outputs = {"logits": logits[1], "pred_boxes": boxes[1], "auxiliary_outputs": [{"logits": logits[0], "pred_boxes": boxes[0]}]}
    criterion = SetCriterion(5, weight_dict={"loss_ce": 2.0, "loss_ce_0": 0.0})
    total, losses = criterion(outputs, targets)
    torch.testing.assert_close(total, 2.0 * losses["loss_ce"])
    assert criterion.weight_of("loss_bbox_0") is None and criterion.weight_of("loss_ce_enc") == 2.0


def test_empty_targets_and_gradients():
    logits, boxes, targets = problem(sizes=(0, 0, 0), layers=1)
    logits, boxes = logits[0].requires_grad_(), boxes[0].requires_grad_()
    total, losses = SetCriterion(5)({"logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    assert torch.isfinite(total)
    total.backward()
    assert logits.grad.abs().sum() > 0  # every query is pushed towards "no object"

    logits, boxes, targets = problem(layers=1)
    logits, boxes = logits[0].requires_grad_(), boxes[0].requires_grad_()
    SetCriterion(5)({"logits": logits, "pred_boxes": boxes}, targets)[0].backward()
    assert boxes.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_criterion_errors():
    logits, boxes, targets = problem(layers=1)
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(4)({"logits": logits[0], "pred_boxes": boxes[0]}, targets)
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(5, losses=("masks",))


_WORKER = """
import sys
import torch
import torch.distributed as dist
from detr_blocks import average_num_boxes

rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
sizes = [(1, 0), (4, 3)][rank]  # 1 box on rank 0, 7 on rank 1: 4 on average
targets = [{"class_labels": torch.zeros(n, dtype=torch.int64), "boxes": torch.full((n, 4), 0.3)} for n in sizes]
print("num_boxes", average_num_boxes(targets, torch.device("cpu")))
dist.destroy_process_group()
"""


def test_num_boxes_is_averaged_across_processes(tmp_path):
    assert average_num_boxes([{"class_labels": torch.zeros(3)}, {"class_labels": torch.zeros(0)}], torch.device("cpu")) == 3.0
    assert average_num_boxes([{"class_labels": torch.zeros(0)}], torch.device("cpu")) == 1.0  # clamped to 1
    # two real processes joined by a gloo group
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    store = str(tmp_path / "store")
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(rank), store], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for rank in range(2)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert "num_boxes 4.0" in out, out + err
