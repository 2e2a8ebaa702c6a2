"""The command line under the run-folder rule: outputs never land on inputs, datasets, runs or
checkpoints; one writer per folder; flags that disagree with a checkpoint or are ignored are named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from models import DeformableDetrConfig
from models.cli.commands import build_train_setup
from models.cli.demo import DEMO_SPEC
from models.cli.main import main
from models.cli.parser import build_parser
from models.data.synthetic import write_synthetic_coco
from models.engine.run_folder import folder_lock
from models.engine.training import TrainingArgs, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("outdata")
    write_synthetic_coco(root, {"train": 4, "val": 2}, DEMO_SPEC, seed=9)
    return root


@pytest.fixture(scope="module")
def run(tiny_config, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("outrun") / "run"
    train(TrainingArgs(data=str(data), out=str(out), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48,
                       max_size=48, progress=False, max_steps_per_epoch=1, multiscale=False), DeformableDetrConfig(**tiny_config))
    return out


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (48, 40), (120, 30, 200)).save(folder / name)
    return folder


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": warning:" not in line]
    assert len(lines) == 1 and ": error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ outputs never overwrite inputs
def test_detect_refuses_to_write_into_the_folder_of_its_images(photos, tiny_checkpoint, capsys, monkeypatch):
    before = _snapshot(photos)
    assert main(["detect", str(photos), "--checkpoint", str(tiny_checkpoint), "--out", str(photos)]) == 2
    _one_error(capsys, f"--out {str(photos)!r}", "the folder of the input image", "a.png")
    monkeypatch.chdir(photos)
    assert main(["detect", "a.png", "--checkpoint", "demo", "--out", "."]) == 2
    _one_error(capsys, "--out '.'", "the folder of the input image 'a.png'")
    assert _snapshot(photos) == before
    assert main(["detect", "a.png", "--checkpoint", "demo", "--out", "annotated", "--threshold", "0.9"]) == 0  # a folder inside is fine
    assert sorted(p.name for p in (photos / "annotated").iterdir()) == ["a.json", "a.png"]


def test_detect_and_eval_never_write_into_a_checkpoint_or_a_run(run, data, photos, capsys):
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(run), "--out", str(run / "model")]) == 2
    _one_error(capsys, "the folder of --checkpoint")
    before = _snapshot(run)
    assert main(["eval", "--data", str(data), "--checkpoint", str(run), "--out", str(run)]) == 2
    _one_error(capsys, f"--out {str(run)!r} is the folder of --checkpoint")
    assert main(["detect", str(photos / "a.png"), "--checkpoint", "demo", "--out", str(run)]) == 2
    _one_error(capsys, "holds a training run (finished: 1 of 1 epochs); detect does not write over it")
    assert _snapshot(run) == before


def test_eval_never_writes_its_metrics_over_the_predictions_it_scores(data, tmp_path, capsys):
    out = tmp_path / "scores"
    out.mkdir()
    (out / "metrics.json").write_text("[]")
    assert main(["eval", "--data", str(data), "--predictions", str(out / "metrics.json"), "--out", str(out)]) == 2
    _one_error(capsys, "would replace the --predictions file", "metrics.json")
    assert (out / "metrics.json").read_text() == "[]"


def test_eval_never_writes_inside_the_dataset(run, data, capsys):
    assert main(["eval", "--data", str(data), "--checkpoint", str(run), "--out", str(data / "eval")]) == 2
    _one_error(capsys, "lies in the dataset --data")
    assert not (data / "eval").exists()


def test_make_data_refuses_a_dataset_or_a_run_unless_overwrite_for_its_own_kind(run, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["make-data", "--out", str(out), "--train", "2", "--val", "1"]) == 0
    annotations = (out / "annotations" / "train.json").read_bytes()
    assert main(["make-data", "--out", str(out), "--train", "3", "--val", "1", "--seed", "5"]) == 2
    _one_error(capsys, "holds a dataset", "make-data does not write over it")
    assert (out / "annotations" / "train.json").read_bytes() == annotations
    assert main(["make-data", "--out", str(out), "--train", "3", "--val", "1", "--seed", "5", "--overwrite"]) == 0
    assert len(json.loads((out / "annotations" / "train.json").read_text())["images"]) == 3
    assert len(list((out / "images" / "train").iterdir())) == 3  # no image of the old dataset is left among the new
    (aside,) = out.glob("replaced-*")
    assert (aside / "annotations" / "train.json").read_bytes() == annotations
    assert main(["make-data", "--out", str(run), "--train", "1", "--overwrite"]) == 2
    _one_error(capsys, "holds a training run")


# ------------------------------------------------------------------------- runs and their lock
def test_train_on_a_finished_run_needs_resume_or_overwrite(run, data, tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    config = tmp_path / "config.json"
    DeformableDetrConfig(**tiny_config).to_json_file(config)
    argv = ["train", "--data", str(data), "--out", str(out), "--config", str(config), "--epochs", "1", "--max-steps-per-epoch", "1",
            "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress", "--batch-size", "2", "--no-multiscale"]
    before = _snapshot(out)
    assert main(argv) == 2
    _one_error(capsys, "holds a training run (finished: 1 of 1 epochs)", f"--resume {str(out)!r}", "--overwrite")
    assert _snapshot(out) == before
    assert main([*argv, "--overwrite"]) == 0
    assert "the previous run's files are now in" in capsys.readouterr().out
    (aside,) = out.glob("replaced-*")
    assert _snapshot(aside) == {name: content for name, content in before.items() if not name.startswith("replaced-")}


def test_a_folder_being_written_is_refused_naming_the_writer(tiny_checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "det"
    out.mkdir()
    with folder_lock(out, command="deformable-detr detect other.png --out det"):
        assert main(["detect", str(photos / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 2
    _one_error(capsys, "is being written by another command", f"pid {os.getpid()}", "'deformable-detr detect other.png --out det'")
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert not (out / ".deformable-detr.lock").exists()


# ---------------------------------------------------------- explicit settings, never silence
@pytest.mark.parametrize("command", [["train", "--data", "d", "--out", "o"], ["detect", "x.png", "--checkpoint", "demo"],
                                     ["eval", "--data", "d", "--checkpoint", "demo"], ["demo"]])
def test_an_unknown_device_is_one_line_naming_the_flag_and_the_valid_values(command, capsys):
    assert main([*command, "--device", "tpu"]) == 2
    _one_error(capsys, "--device must be one of auto, cpu, cuda, cuda:N or mps, got 'tpu'")


def test_demo_refuses_flags_it_would_ignore(tiny_checkpoint, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--train", "--checkpoint", str(tiny_checkpoint)]) == 2
    _one_error(capsys, "--train", "--checkpoint")
    assert main(["demo", "--out", str(tmp_path / "o"), "--epochs", "3"]) == 2
    _one_error(capsys, "--epochs applies to the detector --train trains")


def test_image_size_flags_that_differ_from_the_checkpoint_warn(tiny_checkpoint, photos, tmp_path, capsys):
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
                 "--image-size", "32", "--max-size", "64"]) == 0
    err = capsys.readouterr().err
    assert "warning: --checkpoint" in err and "--image-size 32 (the checkpoint's: 48) override its preprocessor_config.json" in err
    assert "--max-size" not in err.split("override")[0]  # 64 is the checkpoint's own


def test_a_variant_flag_that_disagrees_with_a_training_state_is_refused(run, photos, tmp_path, capsys):
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(run / "training_state.pt"), "--out", str(tmp_path / "o"),
                 "--d-model", "64"]) == 2
    _one_error(capsys, "d_model=64 (checkpoint: 32)")


def test_weights_of_another_variant_name_the_setting_without_strict(tiny_checkpoint, tiny_config, photos, tmp_path, capsys):
    folder = tmp_path / "edited"
    folder.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    DeformableDetrConfig(**{**tiny_config, "two_stage": False}, num_labels=3).to_json_file(folder / "config.json")
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 2
    line = _one_error(capsys, "two_stage: the weights have the two-stage proposal layers")
    assert "strict=False" not in line


def test_a_pth_with_a_blocked_payload_is_named_a_pickle_we_will_not_run(photos, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    path = tmp_path / "payload.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload()}, path)
    assert main(["detect", str(photos / "a.png"), "--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
    line = _one_error(capsys, "holds Python objects besides tensors", "system)", "could run code", "--trust-pickle")
    assert "corrupt" not in line


def test_dino_denoising_labels_are_checked_after_the_class_count(tmp_path):
    config = tmp_path / "dino.json"
    config.write_text(json.dumps({"dn_labelbook_size": 3}))
    ns = build_parser().parse_args(["train", "--model", "dino", "--preset", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                    "--config", str(config)])
    _, built = build_train_setup(ns)
    assert built.dn_labelbook_size == 3


def test_a_preset_backbone_changed_by_a_flag_still_warns_about_random_weights(tmp_path):
    ns = build_parser().parse_args(["train", "--preset", "demo", "--backbone", "resnet50", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.warns(UserWarning, match="resnet50 backbone starts from random weights"):
        build_train_setup(ns)



def test_a_config_file_that_disagrees_with_a_checkpoint_folder_is_refused(tiny_checkpoint, tiny_config, photos, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"num_queries": 5, "d_model": tiny_config["d_model"]}))
    argv = ["detect", str(photos / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--config", str(other)]) == 2
    line = _one_error(capsys, "--config num_queries=5 (checkpoint: 8)")
    assert "d_model" not in line  # the same value is no disagreement
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"num_queries": tiny_config["num_queries"]}))
    assert main([*argv, "--config", str(same)]) == 0


def test_demo_train_into_an_earlier_demo_run_needs_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("models.cli.demo.DEMO_SPLITS", {"train": 2, "val": 1})  # the refusal comes before any training
    run = tmp_path / "demo" / "training"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train", "--epochs", "1", "--test-images", "1", "--num-images", "0"]) == 2
    _one_error(capsys, "holds a training run", "demo: --overwrite replaces the run")
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
