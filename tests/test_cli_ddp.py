"""Distributed training: two CPU processes (gloo) launched by torchrun end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.cli.demo import DEMO_SPEC
from models.data.synthetic import write_synthetic_coco

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, json, torch, torch.distributed as dist
torch.set_num_threads(1)
from models import DeformableDetrConfig
from models.engine.training import TrainingArgs, train
config = DeformableDetrConfig(**json.loads(sys.argv[1]))
args = TrainingArgs(data=sys.argv[2], out=sys.argv[3], epochs=1, max_steps_per_epoch=3, batch_size=2, eval_batch_size=2,
                    num_workers=0, image_size=48, max_size=48, progress=False, seed=5, lr=1e-3, lr_backbone=1e-3)
result = train(args, config)
# test only: every rank reports its weights (training itself writes from rank 0 alone)
torch.save(result["model"].state_dict(), f"{sys.argv[4]}/rank{result['rank']}.pt")
print("rank", result["rank"], "of", dist.get_world_size(), "backend", dist.get_backend(), "step", result["step"])
dist.destroy_process_group()
"""


def test_two_gloo_processes_hold_identical_weights(tiny_config, tmp_path):
    data = tmp_path / "data"
    write_synthetic_coco(data, {"train": 12, "val": 2}, DEMO_SPEC, seed=2)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    weights = tmp_path / "weights"
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               json.dumps(tiny_config), str(data), str(tmp_path / "run"), str(weights)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "of 2 backend gloo step 3" in done.stdout

    rank0 = torch.load(weights / "rank0.pt")
    rank1 = torch.load(weights / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # the processes did train: the weights moved away from the common initialisation
    config = DeformableDetrConfig(**tiny_config).copy(num_labels=3, id2label={0: "circle", 1: "square", 2: "triangle"},
                                                label2id={"circle": 0, "square": 1, "triangle": 2})
    torch.manual_seed(5)
    initial = DeformableDetrForObjectDetection(config).state_dict()
    moved = [key for key in rank0 if rank0[key].is_floating_point() and not torch.equal(rank0[key], initial[key])]
    assert len(moved) > len(rank0) // 4

    # only rank 0 wrote the run's files: one metrics line, and its checkpoint equals both ranks' weights
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 3
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=False)
    assert all(torch.equal(state["model"][key], rank0[key]) for key in rank0)
