"""post_process_object_detection against transformers 4.57 on the same random model outputs."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeformableDetrImageProcessor as HFSlow  # noqa: E402

from models import DeformableDetrImageProcessor, DeformableDetrImageProcessorFast  # noqa: E402
from models.processing.postprocess import post_process_object_detection  # noqa: E402


def random_outputs(batch: int, queries: int, classes: int, seed: int = 0) -> types.SimpleNamespace:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator) * 3
    pred_boxes = torch.rand(batch, queries, 4, generator=generator)
    return types.SimpleNamespace(logits=logits, pred_boxes=pred_boxes)


def reference(outputs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HFSlow().post_process_object_detection(outputs, **kwargs)


TARGETS = {
    "none": lambda batch: None,
    "tensor-int": lambda batch: torch.tensor([[480, 640], [300, 451], [800, 1199]][:batch]),
    "tensor-float": lambda batch: torch.tensor([[480.0, 640.0], [300.0, 451.0], [800.0, 1199.0]][:batch]),
    "list": lambda batch: [(480, 640), (300, 451), (800, 1199)][:batch],
}


@pytest.mark.parametrize("processor_class", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
@pytest.mark.parametrize(
    "batch,queries,classes,top_k,threshold",
    [
        (2, 300, 91, 100, 0.5),  # the usual shape
        (3, 50, 7, 100, 0.3),  # queries x classes = 350 > top_k
        (2, 6, 5, 100, 0.2),  # queries x classes = 30 < top_k: keep all 30
        (1, 10, 3, 5, 0.0),  # small top_k, no threshold
        (2, 20, 4, 40, 0.999),  # threshold above every score: empty results
    ],
)
@pytest.mark.parametrize("targets", sorted(TARGETS))
def test_matches_transformers(processor_class, batch, queries, classes, top_k, threshold, targets):
    outputs = random_outputs(batch, queries, classes, seed=queries + classes)
    target_sizes = TARGETS[targets](batch)
    ours = processor_class().post_process_object_detection(
        outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k
    )
    theirs = reference(outputs, threshold=threshold, target_sizes=target_sizes, top_k=top_k)
    assert len(ours) == len(theirs) == batch
    for mine, ref in zip(ours, theirs):
        assert set(mine) == {"scores", "labels", "boxes"}
        for key in mine:
            assert mine[key].shape == ref[key].shape, key
            assert mine[key].dtype == ref[key].dtype, key
            torch.testing.assert_close(mine[key], ref[key], rtol=0, atol=1e-5)
        assert len(mine["scores"]) <= min(top_k, queries * classes)
        assert (mine["scores"] > threshold).all()


def test_brute_force_small():
    """Independent check: enumerate every (query, class) pair, sort, keep above threshold."""
    outputs = random_outputs(1, 4, 3, seed=5)
    result = post_process_object_detection(outputs, threshold=0.1, target_sizes=[(10, 20)], top_k=100)[0]
    probs = outputs.logits[0].sigmoid().double()
    pairs = sorted(((probs[q, c].item(), q, c) for q in range(4) for c in range(3)), reverse=True)
    pairs = [p for p in pairs if p[0] > 0.1]
    assert result["labels"].tolist() == [c for _, _, c in pairs]
    for (score, q, _), got_score, box in zip(pairs, result["scores"], result["boxes"]):
        assert abs(score - got_score.item()) < 1e-6
        cx, cy, w, h = outputs.pred_boxes[0, q].double().tolist()
        expected = torch.tensor(
            [(cx - w / 2) * 20, (cy - h / 2) * 10, (cx + w / 2) * 20, (cy + h / 2) * 10], dtype=torch.float64
        )
        torch.testing.assert_close(box.double(), expected, rtol=0, atol=1e-4)


def test_dict_outputs_accepted():
    outputs = random_outputs(2, 8, 3)
    as_dict = {"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}
    a = post_process_object_detection(as_dict, threshold=0.3)
    b = post_process_object_detection(outputs, threshold=0.3)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(
    "kwargs,outputs,message",
    [
        (dict(target_sizes=[(10, 10)]), random_outputs(2, 5, 3), "target_sizes"),
        (dict(target_sizes=torch.ones(2, 3)), random_outputs(2, 5, 3), "target_sizes"),
        (dict(top_k=0), random_outputs(2, 5, 3), "top_k"),
        (dict(threshold=float("nan")), random_outputs(2, 5, 3), "threshold"),
        (dict(threshold="0.5"), random_outputs(2, 5, 3), "threshold"),
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5), pred_boxes=torch.zeros(2, 5, 4)), "logits"),
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5, 3), pred_boxes=torch.zeros(2, 4, 4)), "pred_boxes"),
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5, 3)), "pred_boxes"),
    ],
)
def test_bad_arguments(kwargs, outputs, message):
    with pytest.raises(ValueError, match=message):
        post_process_object_detection(outputs, **kwargs)


@pytest.mark.parametrize(
    "target_sizes",
    [
        [(-64, 64)],
        [(64, 0)],
        torch.tensor([[64, -1]]),
        torch.tensor([[float("nan"), 64.0]]),
        [(64, float("inf"))],
        torch.ones(1, 2, 1),
        [(64, 64, 64)],
        [("a", 64)],
    ],
)
def test_target_sizes_must_be_positive_pairs(target_sizes):
    """Reported: target_sizes=[(-64, 64)] returned negative boxes instead of an error."""
    with pytest.raises(ValueError, match=r"target_sizes"):
        post_process_object_detection(random_outputs(1, 5, 3), threshold=0.0, target_sizes=target_sizes)


# ----------------------------------------------------------------------------- class-aware NMS
def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(scores: list[float], labels: list[int], boxes: list[list[float]], iou_threshold: float) -> list[int]:
    """Greedy NMS per label, written out: visit by decreasing score, keep a box unless a kept box of its
    label overlaps it with IoU > iou_threshold. Returns the kept positions in their original order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or _iou(boxes[i], boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    return sorted(kept)


def clustered_outputs(batch: int, queries: int, classes: int, seed: int) -> types.SimpleNamespace:
    """Random outputs whose boxes come in clusters of near-duplicates, so that NMS has work to do."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator, dtype=torch.float64) * 3
    centres = torch.rand(batch, queries // 4 + 1, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.25
    jitter = torch.randn(batch, queries, 4, generator=generator, dtype=torch.float64) * 0.03
    pred_boxes = (centres.repeat_interleave(4, dim=1)[:, :queries] + jitter).clamp(0.01, 0.99)
    return types.SimpleNamespace(logits=logits.float(), pred_boxes=pred_boxes.float())


@pytest.mark.parametrize("processor_class", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
@pytest.mark.parametrize("nms_threshold", [0.1, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_brute_force_greedy_nms(processor_class, nms_threshold, seed):
    outputs = clustered_outputs(batch=2, queries=40, classes=3, seed=seed)
    target_sizes = [(48, 64), (100, 30)]
    plain = processor_class().post_process_object_detection(outputs, threshold=0.2, target_sizes=target_sizes, top_k=60)
    suppressed = processor_class().post_process_object_detection(
        outputs, threshold=0.2, target_sizes=target_sizes, top_k=60, nms_threshold=nms_threshold
    )
    removed_somewhere = False
    for before, after in zip(plain, suppressed):
        boxes = before["boxes"].double().tolist()
        kept = brute_force_nms(before["scores"].tolist(), before["labels"].tolist(), boxes, nms_threshold)
        removed_somewhere |= len(kept) < len(boxes)
        for key in ("scores", "labels", "boxes"):
            assert torch.equal(after[key], before[key][kept]), key
    if nms_threshold < 1.0:
        assert removed_somewhere, "the clustered outputs should give NMS something to remove"


def test_nms_is_applied_per_image_and_per_class():
    """Two identical boxes: suppressed when they share a label, both kept when the labels differ or the
    images differ."""
    logits = torch.full((2, 2, 2), -10.0)
    logits[0, 0, 0], logits[0, 1, 0] = 3.0, 2.0  # image 0: two queries of class 0
    logits[1, 0, 0], logits[1, 1, 1] = 3.0, 2.0  # image 1: one of class 0, one of class 1
    pred_boxes = torch.tensor([0.5, 0.5, 0.4, 0.4]).expand(2, 2, 4).clone()
    outputs = types.SimpleNamespace(logits=logits, pred_boxes=pred_boxes)
    first, second = post_process_object_detection(outputs, threshold=0.5, nms_threshold=0.5)
    assert first["labels"].tolist() == [0]
    assert sorted(second["labels"].tolist()) == [0, 1]


@pytest.mark.parametrize("processor_class", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
def test_nms_off_is_exactly_transformers(processor_class):
    outputs = clustered_outputs(batch=2, queries=40, classes=3, seed=7)
    ours = processor_class().post_process_object_detection(outputs, threshold=0.2, target_sizes=[(48, 64), (100, 30)], nms_threshold=None)
    theirs = reference(outputs, threshold=0.2, target_sizes=[(48, 64), (100, 30)])
    for mine, ref in zip(ours, theirs):
        for key in ("scores", "labels", "boxes"):
            assert torch.equal(mine[key], ref[key]), key


def test_feature_extractor_takes_nms_threshold():
    from models import DeformableDetrFeatureExtractor

    with pytest.warns(FutureWarning):
        extractor = DeformableDetrFeatureExtractor()
    outputs = clustered_outputs(batch=1, queries=20, classes=2, seed=3)
    expected = post_process_object_detection(outputs, threshold=0.1, nms_threshold=0.5)
    got = extractor.post_process_object_detection(outputs, threshold=0.1, nms_threshold=0.5)
    for key in ("scores", "labels", "boxes"):
        assert torch.equal(got[0][key], expected[0][key])


@pytest.mark.parametrize("nms_threshold", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5", [0.5]])
def test_nms_threshold_is_validated(nms_threshold):
    with pytest.raises(ValueError, match="nms_threshold"):
        post_process_object_detection(random_outputs(1, 5, 3), nms_threshold=nms_threshold)
