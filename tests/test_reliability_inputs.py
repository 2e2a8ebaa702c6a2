"""Reliability against bad inputs: COCO annotations, unusable datasets, image files, checkpoint and config
files, and command-line values. Each case is refused with one line naming the file, or warned about."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.cli.demo import DEMO_SPEC
from models.cli.main import main
from models.data.coco import CocoDetection, validate_coco
from models.data.image_files import ImageError, read_image
from models.data.synthetic import SyntheticSpec, write_synthetic_coco
from models.engine.evaluation import coco_metrics
from models.engine.training import TrainingArgs, make_processor, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("relckpt")
    torch.manual_seed(0)
    DeformableDetrForObjectDetection(DeformableDetrConfig(**tiny_config, id2label={0: "a", 1: "b", 2: "c"})).save_pretrained(path)
    make_processor(48, 64).save_pretrained(path)
    return path


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if ": warning:" not in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# ------------------------------------------------------------------------ 3: one COCO validator
def _gt(annotations):
    return {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}, {"id": 2, "file_name": "b.png", "width": 40, "height": 40}],
            "categories": [{"id": 1, "name": "x"}], "annotations": annotations}


def _box(ann_id, image_id=1, bbox=(2, 2, 10, 10), **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), **extra}


@pytest.mark.parametrize(
    "annotation, message",
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}, r"annotation #0 .*needs an integer field 'id'"),
        (_box(7, bbox=(float("nan"), 0, 2, 2)), r"annotation 7 needs 'bbox' as 4 finite numbers"),
        (_box(8, area="big"), r"annotation 8 field 'area' must be a finite number"),
        (_box(9, iscrowd="yes"), r"annotation 9 field 'iscrowd' must be 0 or 1"),
        (_box(10, bbox=(0, 0, True, 2)), r"annotation 10 needs 'bbox'"),
    ],
)
def test_validator_refuses_what_crashes_pycocotools(annotation, message):
    with pytest.raises(ValueError, match=message):
        validate_coco(_gt([annotation]), "gt.json")


def test_duplicate_annotation_ids_are_refused_not_scored():
    # pycocotools indexes by id: with a repeat, AP collapsed (0.82 -> 0.01) without a word
    gt = _gt([_box(1), _box(1, image_id=2)])
    with pytest.raises(ValueError, match=r"gt.json: annotation 1 appears twice .*corrupt the metrics"):
        validate_coco(gt, "gt.json")
    preds = [{"image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 1.0} for i in (1, 2)]
    with pytest.raises(ValueError, match="appears twice"):
        coco_metrics(gt, preds)


def test_zero_size_boxes_are_skipped_with_a_warning_and_not_scored():
    gt = _gt([_box(1), _box(2, bbox=(5, 5, 0, 4))])
    with pytest.warns(UserWarning, match=r"skipped 1 annotation.*zero-width or zero-height box \(ids 2\)"):
        metrics, _ = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 1.0}])
    assert metrics["AP"] == pytest.approx(1.0)  # the unmatched zero-size box no longer counts as a miss


def test_nan_detections_are_refused():
    gt = _gt([_box(1)])
    with pytest.raises(ValueError, match="record 0 needs 'bbox'"):
        coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [float("nan"), 2, 10, 10], "score": 1.0}])
    with pytest.raises(ValueError, match="record 0 needs 'score'"):
        coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": float("inf")}])


def test_eval_command_names_file_annotation_and_field(tmp_path, capsys):
    write_synthetic_coco(tmp_path, {"val": 2}, DEMO_SPEC, seed=1)
    ann = tmp_path / "annotations" / "val.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["iscrowd"] = "yes"
    ann.write_text(json.dumps(data))
    preds = tmp_path / "p.json"
    preds.write_text("[]")
    assert main(["eval", "--data", str(tmp_path), "--predictions", str(preds), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "val.json", f"annotation {data['annotations'][0]['id']}", "'iscrowd'")


# ------------------------------------------------------------------------ 6: unusable data
def _dataset(root, annotations_of):
    write_synthetic_coco(root, {"train": 2, "val": 2}, DEMO_SPEC, seed=1)
    for split in ("train", "val"):
        ann = root / "annotations" / f"{split}.json"
        data = json.loads(ann.read_text())
        data = annotations_of(split, data)
        ann.write_text(json.dumps(data))
    return root


def _train_args(root, out):
    return TrainingArgs(data=str(root), out=str(out), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48,
                        max_size=48, progress=False, multiscale=False)


@pytest.mark.parametrize("kind, message", [
    ("no images", "lists no images"),
    ("all empty", "there are no annotations"),
    ("all crowd", "crowd boxes"),
])
def test_training_refuses_unusable_data(tmp_path, tiny_config, kind, message):
    def change(split, data):
        if split != "train":
            return data
        if kind == "no images":
            return {**data, "images": [], "annotations": []}
        if kind == "all empty":
            return {**data, "annotations": []}
        return {**data, "annotations": [{**a, "iscrowd": 1} for a in data["annotations"]]}

    root = _dataset(tmp_path / "d", change)
    with pytest.raises(ValueError, match=f"training split 'train' cannot be trained on: .*{message}"):
        train(_train_args(root, tmp_path / "out"), DeformableDetrConfig(**tiny_config))
    assert not (tmp_path / "out" / "model").exists()


def test_eval_on_zero_images_is_refused_and_all_crowd_warns(tmp_path, checkpoint, capsys):
    root = _dataset(tmp_path / "d", lambda split, data: {**data, "images": [], "annotations": []})
    assert main(["eval", "--data", str(root), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "no images", "nothing to evaluate")
    with pytest.raises(ValueError, match="no images"):
        coco_metrics({"images": [], "annotations": [], "categories": [{"id": 1}]}, [])
    root = _dataset(tmp_path / "c", lambda split, data: {**data, "annotations": [{**a, "iscrowd": 1} for a in data["annotations"]]})
    assert main(["eval", "--data", str(root), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o2")]) == 0
    assert "warning: split 'val'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 4: image files
def _exif_rotated(path, array):
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90 degree clockwise turn
    image.save(path, exif=exif.tobytes())


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :10] = 255  # a white band on the left of the stored pixels
    _exif_rotated(tmp_path / "phone.png", array)
    image = read_image(tmp_path / "phone.png")
    assert image.size == (20, 40)  # upright: the stored 40x20 turned by 90 degrees
    upright = np.asarray(image)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band is now at the top


def test_high_bit_depth_and_float_images(tmp_path):
    ramp16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    got = np.asarray(read_image(tmp_path / "g16.png"))[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp16 / 257)).max() <= 1 and got.min() == 0 and got.max() > 200  # not all white
    ramp = (np.arange(32 * 32).reshape(32, 32) / (32 * 32 - 1)).astype(np.float32)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    got = np.asarray(read_image(tmp_path / "f.tif"))[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp * 255)).max() <= 1 and got.max() == 255  # not all black
    Image.fromarray(ramp * 1000 - 5).save(tmp_path / "hdr.tif")
    with pytest.raises(ImageError, match=r"hdr.tif.*float pixels span -5..995"):
        read_image(tmp_path / "hdr.tif")
    nan = ramp.copy()
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match=r"nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


def test_decompression_bomb_and_extreme_aspect_are_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(["detect", str(tmp_path / "bomb.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "bomb.png", "decompression bomb")
    monkeypatch.undo()
    Image.new("RGB", (4000, 2)).save(tmp_path / "thin.png")
    assert main(["detect", str(tmp_path / "thin.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "thin.png", "4000x2")


def test_dataset_reads_images_through_read_image(tmp_path):
    root = tmp_path / "d"
    write_synthetic_coco(root, {"val": 1}, SyntheticSpec(image_size=(32, 32), classes=("circle",), max_objects=1), seed=0)
    path = root / "images" / "val" / "000000.png"
    array = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 257
    Image.fromarray(array).save(path)  # now 16-bit grayscale
    image, _ = CocoDetection(root / "images" / "val", root / "annotations" / "val.json")[0]
    assert np.abs(np.asarray(image)[..., 0].astype(int) - array // 257).max() <= 1


# ---------------------------------------------------------------- 8/9: checkpoint and config files
def test_corrupt_weight_files_are_named_as_corrupt(tmp_path, checkpoint, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    for name in ("model.safetensors", "pytorch_model.bin"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
        (folder / "preprocessor_config.json").write_bytes((checkpoint / "preprocessor_config.json").read_bytes())
        (folder / name).write_bytes(b"\x00\x01 not weights")
        assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 2
        line = _one_line_error(capsys, name, "corrupt")
        assert "trust" not in line
    # a truncated .pth: corrupt, not "needs trust_pickle", and --trust-pickle does not crash on it
    good = tmp_path / "good.pth"
    torch.save({"model": {"a": torch.zeros(3)}}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:100])
    for extra in ([], ["--trust-pickle"]):
        assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(bad), "--variant", "two_stage", *extra]) == 2
        line = _one_line_error(capsys, "bad.pth", "corrupt")
        assert "trust" not in line


class _Obj:
    pass


def test_pickle_refusal_is_short_and_names_the_flag(tmp_path, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    path = tmp_path / "objects.pth"
    torch.save({"model": {"a": torch.zeros(3)}, "extra": _Obj()}, path)
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(path)]) == 2
    line = _one_line_error(capsys, "objects.pth", "--trust-pickle", "could run code")
    assert len(line) < 300 and "\x1b" not in line and "trust_pickle" not in line


def test_width_mismatch_names_the_width(tmp_path, tiny_config, checkpoint, capsys):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (wrong / name).write_bytes((checkpoint / name).read_bytes())
    DeformableDetrConfig(**{**tiny_config, "d_model": 64}, num_labels=3).to_json_file(wrong / "config.json")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(wrong)]) == 2
    line = _one_line_error(capsys, "wrong", "(32,) features per query", "(64,)")
    assert "3 classes but the config asks for 3" not in line


def test_broken_config_json_is_named(tmp_path, checkpoint, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (folder / name).write_bytes((checkpoint / name).read_bytes())
    (folder / "config.json").write_text("")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder)]) == 2
    _one_line_error(capsys, "config.json", "not valid JSON")


def test_missing_preprocessor_config_warns_naming_the_assumption(tmp_path, checkpoint, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((checkpoint / name).read_bytes())
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "no preprocessor_config.json" in err and "800" in err and "1333" in err
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o"),
                 "--image-size", "48", "--max-size", "64"]) == 0
    assert "preprocessor_config" not in capsys.readouterr().err


def test_pth_without_args_keeps_the_config_class_names(tmp_path, tiny_config, capsys):
    names = {0: "cat", 1: "dog", 2: "fox"}
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**tiny_config, id2label=names))
    to_original = pytest.importorskip("test_models_checkpoints").to_original  # the test suite's own key mapping
    original = to_original(model)
    torch.save({"model": original}, tmp_path / "w.pth")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**tiny_config, "id2label": {str(k): v for k, v in names.items()}}))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "w.pth"), "--config", str(config),
                 "--out", str(tmp_path / "o"), "--threshold", "0"]) == 0
    labels = {d["label"] for d in json.loads((tmp_path / "o" / "x.json").read_text())["detections"]}
    assert labels <= set(names.values()) and labels
    config.write_text(json.dumps({**tiny_config, "num_labels": 7}))
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "w.pth"), "--config", str(config)]) == 2
    _one_line_error(capsys, "7 classes", "class head has 3")


def test_typo_in_train_config_is_named(tmp_path, tiny_config, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**tiny_config, "num_querys": 5}))
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    _one_line_error(capsys, "c.json", "'num_querys' (did you mean 'num_queries'?)")


# -------------------------------------------------------------------- 10: command-line values
@pytest.mark.parametrize("value", ["-5", "0"])
def test_image_size_must_be_positive(tmp_path, checkpoint, capsys, value):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(checkpoint), "--image-size", value, "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "--image-size", value)


def test_make_data_negative_count(tmp_path, capsys):
    assert main(["make-data", "--out", str(tmp_path / "d"), "--train", "-3"]) == 2
    _one_line_error(capsys, "--train", "-3")
    with pytest.raises(ValueError, match=r"splits\['train'\]"):
        write_synthetic_coco(tmp_path / "e", {"train": -3})

