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
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5), pred_boxes=torch.zeros(2, 5, 4)), "logits"),
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5, 3), pred_boxes=torch.zeros(2, 4, 4)), "pred_boxes"),
        (dict(), types.SimpleNamespace(logits=torch.zeros(2, 5, 3)), "pred_boxes"),
    ],
)
def test_bad_arguments(kwargs, outputs, message):
    with pytest.raises(ValueError, match=message):
        post_process_object_detection(outputs, **kwargs)
