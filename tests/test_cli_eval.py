"""COCO evaluation: ours (function and `eval --predictions`) against pycocotools called directly."""

from __future__ import annotations

import contextlib
import io
import json
import random

import pytest

from models.cli.main import main
from models.data.synthetic import SyntheticSpec, write_synthetic_coco
from models.engine.evaluation import METRIC_NAMES, coco_metrics

SPEC = SyntheticSpec(image_size=(120, 160), classes=("circle", "square", "triangle"), category_ids=(2, 5, 9), max_objects=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    write_synthetic_coco(root, {"val": 12}, SPEC, seed=4)
    return root


def _hand_made_predictions(gt: dict, seed: int) -> list:
    """Ground truth perturbed by hand-picked kinds of error: jitter, wrong class, misses, false positives."""
    rng = random.Random(seed)
    preds = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        kind = rng.random()
        if kind < 0.1:
            continue  # missed
        category = ann["category_id"] if kind > 0.2 else rng.choice([c["id"] for c in gt["categories"]])
        jitter = [rng.uniform(-0.15, 0.15) * s for s in (w, h, w, h)]
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        preds.append({"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": rng.uniform(0.3, 1.0)})
    for image in gt["images"]:
        for _ in range(rng.randint(0, 2)):  # false positives
            preds.append({"image_id": image["id"], "category_id": rng.choice([c["id"] for c in gt["categories"]]),
                          "bbox": [rng.uniform(0, 100), rng.uniform(0, 80), rng.uniform(5, 40), rng.uniform(5, 40)],
                          "score": rng.uniform(0.0, 0.6)})
    return preds


def _pycocotools_stats(ann_file, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(preds)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_metrics_reproduce_pycocotools(dataset, seed):
    ann_file = dataset / "annotations" / "val.json"
    gt = json.loads(ann_file.read_text())
    preds = _hand_made_predictions(gt, seed)
    expected = _pycocotools_stats(ann_file, preds)
    metrics, summary = coco_metrics(gt, preds)
    assert [metrics[name] for name in METRIC_NAMES] == pytest.approx(expected, abs=1e-12)
    assert "Average Precision" in summary


def test_eval_command_writes_metrics_json(dataset, tmp_path, capsys):
    ann_file = dataset / "annotations" / "val.json"
    preds = _hand_made_predictions(json.loads(ann_file.read_text()), 7)
    pred_file = tmp_path / "preds.json"
    pred_file.write_text(json.dumps(preds))
    out = tmp_path / "out"
    assert main(["eval", "--data", str(dataset), "--split", "val", "--predictions", str(pred_file), "--out", str(out)]) == 0
    written = json.loads((out / "metrics.json").read_text())
    expected = _pycocotools_stats(ann_file, preds)
    for name, value in zip(METRIC_NAMES, expected):
        assert written[name] == pytest.approx(value, abs=1e-12)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(written)
    assert "AP50" in capsys.readouterr().out


def test_perfect_and_empty_predictions(dataset):
    gt = json.loads((dataset / "annotations" / "val.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in gt["annotations"]]
    metrics, _ = coco_metrics(gt, perfect)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    empty, _ = coco_metrics(gt, [])
    assert empty["AP"] == 0.0


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_id": 999, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}, "image_id 999"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}, "category_id 3"),
        ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1], "score": 1.0}, "bbox"),
        ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}, "score"),
    ],
)
def test_bad_prediction_records_are_named(dataset, tmp_path, capsys, record, message):
    pred_file = tmp_path / "preds.json"
    pred_file.write_text(json.dumps([record]))
    assert main(["eval", "--data", str(dataset), "--predictions", str(pred_file), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_eval_reports_unparsable_files(dataset, tmp_path, capsys):
    bad = tmp_path / "preds.json"
    bad.write_text("[{")
    assert main(["eval", "--data", str(dataset), "--predictions", str(bad)]) == 2
    assert "preds.json" in capsys.readouterr().err and True
    broken = tmp_path / "broken"
    write_synthetic_coco(broken, {"val": 1}, SPEC, seed=0)
    (broken / "annotations" / "val.json").write_text("{oops")
    assert main(["eval", "--data", str(broken), "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "val.json" in err and "not valid JSON" in err
