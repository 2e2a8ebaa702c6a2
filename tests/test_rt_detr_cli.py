"""The command line with ``--model rt-detr``: the family's recipe and ``--preset demo``, training images
prepared as its processor prepares them (a fixed square, [0, 1] pixels), train / eval / detect /
resume on a few CPU steps, and a checkpoint without ``preprocessor_config.json``."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from models import RTDetrConfig
from models.cli.commands import build_train_setup
from models.cli.main import build_parser, main
from models.cli.presets import DEMO_SPEC
from models.data.coco import CocoDetection, resolve_split
from models.data.synthetic import write_synthetic_coco
from models.engine.training import TrainingArgs, make_processor, training_transforms
from models.registry import family

RUN_FLAGS = ["--preset", "demo", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "2", "--eval-batch-size", "2",
             "--num-workers", "0", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtdetrdata")
    write_synthetic_coco(root, {"train": 4, "val": 2}, DEMO_SPEC, seed=4)
    return root


def test_train_setup_uses_rt_detrs_recipe_and_demo_preset(tmp_path):
    ns = build_parser().parse_args(["train", "--model", "rt-detr", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    args, config = build_train_setup(ns)
    assert isinstance(config, RTDetrConfig)
    assert (args.epochs, args.lr_drop, args.lr, args.lr_backbone, args.image_size, args.multiscale) == (72, 0, 1e-4, 1e-5, 640, False)
    assert (args.lr_linear_proj_mult, args.weight_decay, args.clip_max_norm) == (1.0, 1e-4, 0.1)  # the authors' optimizer
    demo = build_parser().parse_args(["train", "--model", "rt-detr", "--preset", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    args, config = build_train_setup(demo)
    assert isinstance(config, RTDetrConfig) and (config.d_model, config.num_queries, config.num_denoising) == (64, 20, 20)
    assert (args.image_size, args.multiscale) == (64, False)


@pytest.mark.parametrize("name", ["deformable-detr", "rt-detr"])
def test_training_images_are_what_the_familys_processor_gives(data, name):
    """The training transforms (no flip) and the processor that training saves give the same pixels:
    Deformable DETR's short-side resize with ImageNet normalisation, RT-DETR's square of [0, 1] pixels (the
    steps its augmentation ends with; the random ones before are tested in test_rt_detr_augmentation.py)."""
    images = family(name).images._replace(augment="detr")
    image, target = CocoDetection(*resolve_split(data, "val"))[0]
    image = image.resize((80, 56))
    target = {**target, "boxes": target["boxes"] * torch.tensor([80 / 64, 56 / 64, 80 / 64, 56 / 64])}
    args = TrainingArgs(data=str(data), out="unused", image_size=48, max_size=96, flip=False, multiscale=False)
    ours, labels = training_transforms(args, images)(image, target, random.Random(0))
    processor = make_processor(48, 96, images)
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == ((3, 48, 48) if name == "rt-detr" else (3, 48, 68))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    if name == "rt-detr":
        assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0 and not processor.do_normalize
    assert labels["boxes"].max() <= 1.0  # normalized (cx, cy, w, h), whatever the resize


def test_rt_detr_refuses_multiscale(data, tmp_path, capsys):
    assert main(["train", "--model", "rt-detr", "--data", str(data), "--out", str(tmp_path / "run"), *RUN_FLAGS, "--multiscale"]) == 2
    assert "square" in capsys.readouterr().err


def test_train_eval_detect_resume_with_rt_detr(data, tmp_path, capsys):
    run = tmp_path / "run"
    torch.manual_seed(0)
    assert main(["train", "--model", "rt-detr", "--data", str(data), "--out", str(run), *RUN_FLAGS]) == 0
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "rt_detr" and saved["d_model"] == 64
    processor = json.loads((run / "model" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "RTDetrImageProcessor" and processor["size"] == {"height": 64, "width": 64}
    assert processor["do_normalize"] is False
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train_loss_vfl" in line and any(key.endswith("_dn_0") or "_dn" in key for key in line), sorted(line)

    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50"} <= set(metrics)
    assert len(json.loads((tmp_path / "eval" / "detections.json").read_text())) == 2 * 60  # per image, all 60 (query, class) pairs of 20 queries x 3 classes (top 100)

    image = next((data / "images" / "val").glob("*.png"))
    for source, out in ((run, "det"), (run / "training_state.pt", "det_state")):  # the model folder, and the training state
        assert main(["detect", str(image), "--checkpoint", str(source), "--out", str(tmp_path / out), "--threshold", "0.0",
                     "--top-k", "5", "--nms", "0.5"]) == 0
        record = json.loads(next((tmp_path / out).glob("*.json")).read_text())
        assert 1 <= len(record["detections"]) <= 5, record
    first = json.loads(next((tmp_path / "det").glob("*.json")).read_text())["detections"]
    again = json.loads(next((tmp_path / "det_state").glob("*.json")).read_text())["detections"]
    assert [d["box"] for d in first] == [d["box"] for d in again]  # the same processor from either source

    # resuming continues the RT-DETR run (the family comes from the checkpoint)
    assert main(["train", "--model", "rt-detr", "--data", str(data), "--out", str(run), "--resume", str(run), *RUN_FLAGS[:2],
                 "--epochs", "2", *RUN_FLAGS[4:]]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    # without preprocessor_config.json the family's own resize is assumed (a square), and said so
    bare = tmp_path / "bare"
    shutil.copytree(run / "model", bare)
    (bare / "preprocessor_config.json").unlink()
    capsys.readouterr()
    assert main(["detect", str(image), "--checkpoint", str(bare), "--out", str(tmp_path / "det_bare"), "--threshold", "0.0"]) == 0
    assert "assuming the paper's resize (a 640x640 square)" in capsys.readouterr().err
    assert main(["detect", str(image), "--checkpoint", str(bare), "--image-size", "64", "--out", str(tmp_path / "det_64"),
                 "--threshold", "0.0", "--top-k", "5"]) == 0
    assert "warning" not in capsys.readouterr().err  # --image-size is all a square needs
    assert len(json.loads(next((tmp_path / "det_64").glob("*.json")).read_text())["detections"]) == 5


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"n_points": 2, "heads": 4, "ffn_dim": 128, "num_queries": 50},
         {"decoder_n_points": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_queries": 50}),
        ({"out_indices": [3, 4]}, "--out-indices"),
        ({"two_stage": True}, "--two-stage"),
    ],
)
def test_model_flags_set_the_rt_detr_fields_it_has_or_are_refused_by_name(flags, expected):
    """RT-DETR's encoder is not deformable and it has no proposal count: --n-points sets the
    decoder's points only; flags without an RT-DETR field are refused, naming the flag."""
    import argparse

    from models.cli.errors import CliError
    from models.cli.loading import model_overrides

    ns = argparse.Namespace(model="rt-detr", variant=None, **flags)
    if isinstance(expected, str):
        with pytest.raises(CliError, match=expected):
            model_overrides(ns)
    else:
        assert model_overrides(ns) == expected
