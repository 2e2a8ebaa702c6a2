"""The command line with ``--model dino``: train (DINO's recipe and denoising), eval and detect read
the family from the checkpoint, resume, DDP, and Deformable DETR-only switches refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.cli.commands import build_train_setup
from models.cli.demo import DEMO_SPEC
from models.cli.main import build_parser, main
from models.data.synthetic import write_synthetic_coco
from models.dino.config import DinoConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--backbone", "resnet18", "--out-indices", "2", "--num-feature-levels", "2", "--d-model", "32", "--enc-layers", "1",
              "--dec-layers", "2", "--heads", "2", "--ffn-dim", "32", "--n-points", "2", "--num-queries", "8"]
RUN_FLAGS = ["--epochs", "1", "--max-steps-per-epoch", "3", "--batch-size", "2", "--eval-batch-size", "2", "--num-workers", "0",
             "--image-size", "48", "--max-size", "48", "--no-multiscale", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dinodata")
    write_synthetic_coco(root, {"train": 8, "val": 2}, DEMO_SPEC, seed=4)
    return root


def test_train_setup_uses_dinos_recipe_and_config(tmp_path):
    ns = build_parser().parse_args(["train", "--model", "dino", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *TINY_FLAGS])
    with pytest.warns(UserWarning, match="random weights"):  # a ResNet from scratch outside the demo preset
        args, config = build_train_setup(ns)
    assert isinstance(config, DinoConfig)
    assert (args.epochs, args.lr_drop, args.lr, args.lr_backbone) == (12, 11, 1e-4, 1e-5)
    assert (config.d_model, config.num_queries, config.backbone_out_indices, config.dn_number) == (32, 8, [2], 100)
    demo = build_parser().parse_args(["train", "--model", "dino", "--preset", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    _, demo_config = build_train_setup(demo)
    assert isinstance(demo_config, DinoConfig) and demo_config.d_model == 64 and demo_config.dn_number == 20


def test_deformable_detr_switches_are_refused_for_dino(tmp_path, capsys):
    code = main(["train", "--model", "dino", "--two-stage", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--two-stage" in capsys.readouterr().err


def test_train_eval_detect_with_dino(data, tmp_path, capsys):
    run = tmp_path / "run"
    torch.manual_seed(0)
    assert main(["train", "--model", "dino", "--data", str(data), "--out", str(run), *TINY_FLAGS, *RUN_FLAGS]) == 0
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "dino" and saved["d_model"] == 32
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(key.startswith("train_loss_ce_dn") for key in line), sorted(line)

    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "AP" in metrics and "AP50" in metrics

    image = next((data / "val").glob("*.png")) if (data / "val").is_dir() else next(data.rglob("*.png"))
    assert main(["detect", str(image), "--checkpoint", str(run), "--out", str(tmp_path / "det"), "--threshold", "0.0"]) == 0
    record = json.loads(next((tmp_path / "det").glob("*.json")).read_text())
    assert record["detections"], record

    # resuming continues the DINO run (the family comes from the checkpoint)
    assert main(["train", "--model", "dino", "--data", str(data), "--out", str(run), "--resume", str(run), "--epochs", "2", *RUN_FLAGS[2:]]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


WORKER = """
import sys, json, torch, torch.distributed as dist
torch.set_num_threads(1)
from models import DinoConfig
from models.engine.training import TrainingArgs, train
args = TrainingArgs(data=sys.argv[2], out=sys.argv[3], epochs=1, max_steps_per_epoch=2, batch_size=2, eval_batch_size=2,
                    num_workers=0, image_size=48, max_size=48, progress=False, seed=5, lr=1e-3, lr_backbone=1e-3)
result = train(args, DinoConfig(**json.loads(sys.argv[1])))
torch.save(result["model"].state_dict(), f"{sys.argv[4]}/rank{result['rank']}.pt")
print("rank", result["rank"], "of", dist.get_world_size(), "step", result["step"])
dist.destroy_process_group()
"""


def test_two_gloo_processes_train_dino_identically(data, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    weights = tmp_path / "weights"
    weights.mkdir()
    config = {"backbone": "resnet18", "backbone_out_indices": [2], "num_feature_levels": 2, "d_model": 32, "encoder_layers": 1,
              "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
              "decoder_ffn_dim": 32, "encoder_n_points": 2, "decoder_n_points": 2, "num_queries": 8, "dn_number": 4}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               json.dumps(config), str(data), str(tmp_path / "run"), str(weights)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "of 2 step 2" in done.stdout
    rank0, rank1 = torch.load(weights / "rank0.pt"), torch.load(weights / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
