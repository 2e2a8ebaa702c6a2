"""Training loop: the loss goes down, resuming is exact, checkpoints are written atomically, bad resumes are named."""

from __future__ import annotations

import json
import random

import pytest
import torch

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.cli.demo import DEMO_SPEC
from models.data.augmentation import collate, eval_transforms
from models.data.coco import CocoDetection, resolve_split
from models.data.synthetic import write_synthetic_coco
from models.engine.training import STATE_FILE, TrainingArgs, atomic_torch_save, build_param_groups, load_training_state, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("traindata")
    write_synthetic_coco(root, {"train": 8, "val": 2}, DEMO_SPEC, seed=1)
    return root


def _args(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48,
                max_size=48, progress=False, lr=1e-3, lr_backbone=1e-3, seed=3)
    base.update(kw)
    return TrainingArgs(**base)


def _fixed_batch(data):
    dataset = CocoDetection(*resolve_split(data, "train"), transforms=None)
    transform = eval_transforms(48, 48)
    return collate([transform(*dataset[i], random.Random(0)) for i in range(4)])


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in batch["labels"]]
        return float(model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=labels).loss)


def test_short_training_lowers_the_loss(tiny_config, data, tmp_path):
    batch = _fixed_batch(data)
    config = DeformableDetrConfig(**tiny_config)
    torch.manual_seed(3)  # train() builds its model after seeding with args.seed: the same initial weights
    initial = DeformableDetrForObjectDetection(config.copy(num_labels=3, id2label={0: "circle", 1: "square", 2: "triangle"},
                                                           label2id={"circle": 0, "square": 1, "triangle": 2}))
    before = _loss(initial, batch)
    result = train(_args(data, tmp_path / "run", epochs=8, multiscale=False, eval_every=8), config)
    after = _loss(result["model"], batch)
    assert after < 0.75 * before, (before, after)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, 9)) and lines[-1]["step"] == 32
    assert "AP50" in lines[-1] and "AP50" not in lines[0]
    # the exported model reloads and gives the same loss
    reloaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "run" / "model")
    assert _loss(reloaded, batch) == pytest.approx(after, rel=1e-5)
    assert (tmp_path / "run" / "model" / "preprocessor_config.json").is_file()


def test_resume_continues_with_the_same_state(tiny_config, data, tmp_path):
    config = DeformableDetrConfig(**tiny_config)
    common = dict(max_steps_per_epoch=2, multiscale=True, flip=True)
    train(_args(data, tmp_path / "straight", epochs=2, **common), config)
    train(_args(data, tmp_path / "split", epochs=1, **common), config)
    first = load_training_state(tmp_path / "split")
    assert first["epoch"] == 1 and first["step"] == 2
    train(_args(data, tmp_path / "split", epochs=2, resume=str(tmp_path / "split" / STATE_FILE), **common), None)
    a, b = load_training_state(tmp_path / "straight"), load_training_state(tmp_path / "split")
    assert a["step"] == b["step"] == 4 and a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["lr_scheduler"] == b["lr_scheduler"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4]


def test_resume_rejects_another_config_and_missing_files(tiny_config, data, tmp_path):
    config = DeformableDetrConfig(**tiny_config)
    train(_args(data, tmp_path / "run", max_steps_per_epoch=1, eval_every=5), config)
    other = config.copy(d_model=64)
    with pytest.raises(ValueError, match=r"training_state.pt.*differs.*d_model"):
        train(_args(data, tmp_path / "run", epochs=2, resume=str(tmp_path / "run")), other)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(_args(data, tmp_path / "run2", resume=str(tmp_path / "nowhere")), config)
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pt"):
        load_training_state(tmp_path / "junk.pt")


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    atomic_torch_save({"value": torch.arange(3)}, path)

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"value": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["value"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


def test_param_groups_follow_the_recipe(tiny_config):
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**tiny_config, num_labels=3))
    groups = {g["name"]: g for g in build_param_groups(model, 2e-4, 2e-5, 0.1)}
    assert groups["main"]["lr"] == 2e-4 and groups["backbone"]["lr"] == 2e-5 and groups["linear_proj"]["lr"] == pytest.approx(2e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("backbone" in names[id(p)] for p in groups["backbone"]["params"])
    assert all(("sampling_offsets" in names[id(p)] or "reference_points" in names[id(p)]) for p in groups["linear_proj"]["params"])
    assert any("sampling_offsets" in names[id(p)] for p in groups["linear_proj"]["params"])
    trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == trainable


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", -1.0), ("amp", "fp8"), ("max_size", 10)])
def test_training_args_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingArgs(data="d", out="o", **{field: value}).validate()


def test_train_command_builds_the_run_from_flags(data, tmp_path, capsys):
    from models.cli.main import main

    out = tmp_path / "cli"
    flags = ["--d-model", "32", "--enc-layers", "1", "--dec-layers", "1", "--heads", "2", "--ffn-dim", "32",
             "--num-queries", "6", "--n-points", "2", "--num-workers", "0", "--no-progress"]
    status = main(["train", "--data", str(data), "--out", str(out), "--preset", "demo", "--epochs", "1",
                   "--max-steps-per-epoch", "1", "--image-size", "48", "--max-size", "48", *flags])
    assert status == 0
    state = load_training_state(out)
    assert state["config"]["d_model"] == 32 and state["config"]["num_queries"] == 6 and state["config"]["two_stage"] is True
    assert state["config"]["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    assert state["train_args"]["image_size"] == 48 and state["train_args"]["lr"] == 4e-4
    assert (out / "model" / "model.safetensors").is_file()
    assert "training done" in capsys.readouterr().out
    # resuming from the command line without model flags continues with the checkpoint's model
    resume = ["train", "--data", str(data), "--out", str(out), "--resume", str(out), "--epochs", "2",
              "--max-steps-per-epoch", "1", "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress"]
    assert main(resume) == 2  # the paper preset does not train the stem: a different optimizer, named
    assert "train_backbone_stem=True" in capsys.readouterr().err
    assert main([*resume, "--preset", "demo"]) == 0
    resumed = load_training_state(out)
    assert resumed["epoch"] == 2 and resumed["step"] == 2 and resumed["config"] == state["config"]
    assert "resumed from" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "new")]) == 2
    assert "absent" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(out), "--d-model", "33"]) == 2
    assert "d_model" in capsys.readouterr().err
