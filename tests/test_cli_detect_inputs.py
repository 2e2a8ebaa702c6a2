"""`detect`'s inputs: files, folders and globs, every one checked before the model loads; per-image
counts (0 included); images streamed a batch at a time; --batch-size; --checkpoint demo; --version;
line-buffered output; labels that do not cover each other."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from models.cli import commands as commands_module
from models.cli import detect as detect_module
from models.cli import main as main_module
from models.cli.detect import IMAGE_SUFFIXES, check_detect_inputs, resolve_image_inputs
from models.cli.errors import CliError
from models.cli.loading import DEMO_CHECKPOINT_DIR, load_detector
from models.cli.main import build_parser, main
from models.engine.detection_io import place_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photos(tmp_path):
    """photos/a.png, photos/b.jpg, photos/notes.txt, photos/sub/c.png (tiny images)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (30, 40), (10, 200, 10)).save(folder / "b.jpg")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the inputs were checked")


# ------------------------------------------------------------------------------- finding the images
def test_files_folders_and_globs_resolve_in_order_each_once(photos):
    a, b, c = str(photos / "a.png"), str(photos / "b.jpg"), str(photos / "sub" / "c.png")
    assert resolve_image_inputs([str(photos)]) == [a, b]  # image endings only, sub-folders not searched
    assert resolve_image_inputs([str(photos / "*.png")]) == [a]
    assert resolve_image_inputs([str(photos / "**" / "*.png")]) == [a, c]  # ** recurses
    assert resolve_image_inputs([c, str(photos), a]) == [c, a, b]  # the first mention wins
    named = photos / "scan.data"
    Image.new("RGB", (8, 8)).save(named, format="PNG")
    assert resolve_image_inputs([str(named)]) == [str(named)]  # a file named one by one may have any ending
    assert ".jpg" in IMAGE_SUFFIXES and ".tif" in IMAGE_SUFFIXES


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.png", "no such file or folder"),
        (lambda d: d / "empty", "holds no image files"),
        (lambda d: d / "*.gif", "matches no image files"),
        (lambda d: d / "notes.txt", "cannot be read"),
    ],
)
def test_bad_inputs_are_named(photos, make, expected):
    (photos / "empty").mkdir()
    target = make(photos)
    with pytest.raises(CliError, match=expected) as info:
        check_detect_inputs([str(target)], 0.5, 100, 1)
    assert target.name in str(info.value)


@pytest.mark.parametrize("option, value", [("--threshold", "1.5"), ("--top-k", "0"), ("--batch-size", "0")])
def test_bad_options_fail_before_the_model_loads(photos, option, value, monkeypatch, capsys):
    monkeypatch.setattr(commands_module, "load_detector", _no_model)
    assert main(["detect", str(photos), "--checkpoint", "demo", option, value, "--out", str(photos / "o")]) == 2
    assert option in capsys.readouterr().err


def test_every_image_is_checked_before_the_model_loads(photos, monkeypatch, capsys):
    monkeypatch.setattr(commands_module, "load_detector", _no_model)
    (photos / "z_broken.png").write_bytes(b"\x89PNG but not really")  # last in the folder
    assert main(["detect", str(photos), "--checkpoint", "demo", "--out", str(photos / "o")]) == 2
    assert "z_broken.png" in capsys.readouterr().err
    assert main(["detect", str(photos / "a.png"), str(photos / "gone.png"), "--checkpoint", "demo"]) == 2
    assert "gone.png" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- running
def test_folder_and_glob_report_per_image_counts_including_zero(tiny_checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(photos), str(photos / "sub" / "*.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--threshold", "0.0", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [f"[1/3] {photos / 'a.png'}", f"[2/3] {photos / 'b.jpg'}",
                                                            f"[3/3] {photos / 'sub' / 'c.png'}"]
    assert all("3 detections (" in line for line in lines[:3])
    assert lines[3].startswith("3 image(s), 9 detection(s)")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png", "c.json", "c.png"]

    # a threshold nothing reaches: 0 detections, said per image with the best score, and both files still written
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "none"),
                 "--threshold", "1.0"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "a.png: 0 detections above 1; best score 0." in first
    assert json.loads((tmp_path / "none" / "a.json").read_text())["detections"] == []


def test_images_are_read_one_batch_at_a_time(tiny_checkpoint, photos, tmp_path, monkeypatch):
    events = []
    real_open, real_predict = detect_module.open_image, detect_module.predict_images
    monkeypatch.setattr(detect_module, "open_image", lambda p: events.append(("open", Path(p).name)) or real_open(p))

    def predict(model, processor, images, **kw):
        events.append(("predict", len(images)))
        return real_predict(model, processor, images, **kw)

    monkeypatch.setattr(detect_module, "predict_images", predict)
    model, processor = load_detector(str(tiny_checkpoint))
    paths = resolve_image_inputs([str(photos), str(photos / "sub")])
    detect_module.detect_images(model, processor, paths, tmp_path / "o", 0.5, 10, "cpu", batch_size=2, report=None)
    assert events == [("open", "a.png"), ("open", "b.jpg"), ("predict", 2), ("open", "c.png"), ("predict", 1)]


def test_batch_size_does_not_change_results_for_same_size_images(tiny_checkpoint, tmp_path):
    paths = []
    for i, colour in enumerate([(250, 0, 0), (0, 0, 250), (0, 250, 0)]):
        image = Image.new("RGB", (48, 40), (90, 90, 90))
        image.paste(colour, (8 + 4 * i, 6, 30 + 2 * i, 30))
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    model, processor = load_detector(str(tiny_checkpoint))
    one = detect_module.detect_images(model, processor, paths, tmp_path / "one", 0.0, 5, "cpu", batch_size=1, report=None)
    three = detect_module.detect_images(model, processor, paths, tmp_path / "three", 0.0, 5, "cpu", batch_size=3, report=None)
    for a, b in zip(one, three):
        assert [d["label"] for d in a.record["detections"]] == [d["label"] for d in b.record["detections"]]
        for da, db in zip(a.record["detections"], b.record["detections"]):
            assert da["score"] == pytest.approx(db["score"], abs=1e-3)
            assert da["box"] == pytest.approx(db["box"], abs=0.05)


# ------------------------------------------------------------------------------ names and versions
def test_checkpoint_demo_names_the_shipped_detector_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a local folder called demo does not shadow the name ...
    model, processor = load_detector("demo")
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    assert processor.size["shortest_edge"] == 64
    assert (DEMO_CHECKPOINT_DIR / "model.safetensors").is_file()
    with pytest.raises(CliError, match="demo"):  # ... while ./demo names it
        load_detector("./demo")


def test_version_and_line_buffered_output(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("deformable-detr ")
    # stdout as a pipe (``deformable-detr demo | tee log``): block-buffered by Python, line-buffered by main()
    read_end, write_end = os.pipe()
    with open(write_end, "w") as piped, open(read_end, "rb", buffering=0) as reader:
        assert not piped.line_buffering
        monkeypatch.setattr(sys, "stdout", piped)
        main_module._line_buffered_output()
        print("[1/4] progress")
        assert reader.read(100) == b"[1/4] progress\n"  # there before the stream is closed or flushed


def test_make_data_and_train_help_say_what_presets_do(capsys):
    for command in ("make-data", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "demo (the default) 64x64 px" in text and "default 128x128 px" in text
    assert "--lr 0.0004" in text and "--max-size 64" in text and "--no-multiscale" in text and "resnet18" in text


def test_training_a_resnet_from_scratch_warns(tmp_path):
    ns = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    with pytest.warns(UserWarning, match="--pretrained-backbone"):
        commands_module.build_train_setup(ns)
    import warnings

    for extra in (["--preset", "demo"], ["--pretrained-backbone"]):
        ns = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            commands_module.build_train_setup(ns)


# -------------------------------------------------------------------------------------- drawing
def test_labels_never_cover_each_other_while_there_is_room():
    boxes = [[100, 100, 200, 200]] * 4 + [[0, 0, 60, 60], [330, 330, 384, 384]]
    sizes = [(90, 16)] * len(boxes)
    corners = place_labels(boxes, sizes, (384, 384))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for i, a in enumerate(rects):
        assert 0 <= a[0] and 0 <= a[1] and a[2] <= 384 and a[3] <= 384
        for b in rects[i + 1 :]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert rects[0][:2] == (100, 84)  # the best score gets the first choice: just above its box


def test_an_image_too_large_to_read_safely_is_refused_before_the_model_loads(photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a.png has 1200 pixels: Pillow only warns below twice the limit
    with pytest.raises(CliError, match="a.png"):
        check_detect_inputs([str(photos / "a.png")], 0.5, 100)
