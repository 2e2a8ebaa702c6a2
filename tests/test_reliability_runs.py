"""One rule for every run folder: a run is never written over without --overwrite, one writer at a
time (a lock naming its holder), outputs never land on inputs; and what training and loading say
when something is wrong (divergence, weights of another variant, of the wrong kind, or NaN)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.cli.demo import DEMO_SPEC
from models.common.checkpoint_files import CheckpointMismatchError, UnfitWeightsError, UntrustedPickleError, torch_load_file
from models.data.synthetic import write_synthetic_coco
from models.engine import run_folder, training
from models.engine.run_folder import FolderInUse, OutputConflict, folder_lock
from models.engine.training import STATE_FILE, TrainingArgs, TrainingDiverged, load_training_state, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundata")
    write_synthetic_coco(root, {"train": 4, "val": 2}, DEMO_SPEC, seed=7)
    return root


def _args(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48,
                max_size=48, progress=False, max_steps_per_epoch=1, multiscale=False, seed=5)
    base.update(kw)
    return TrainingArgs(**base)


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ a run is never written over
def test_a_second_run_into_a_finished_run_is_refused_and_overwrite_moves_it_aside(tiny_config, data, tmp_path):
    out = tmp_path / "run"
    config = DeformableDetrConfig(**tiny_config)
    train(_args(data, out, epochs=2), config)
    before = {name: (out / name).read_bytes() for name in ("training_state.pt", "metrics.jsonl", "train_args.json")}
    with pytest.raises(OutputConflict, match=r"holds a training run \(finished: 2 of 2 epochs\).*--resume.*--overwrite"):
        train(_args(data, out), config)
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    assert not (out / run_folder.LOCK_NAME).exists()

    train(_args(data, out, overwrite=True), config)
    assert _epochs(out) == [1]  # a new run, not epochs 1, 2, 1
    (aside,) = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert {name: (aside / name).read_bytes() for name in before} == before
    assert (aside / "model" / "config.json").is_file() and load_training_state(out)["epoch"] == 1


def test_overwrite_first_repairs_the_old_run_then_moves_it_aside_whole(tiny_config, data, tmp_path):
    out = tmp_path / "run"
    config = DeformableDetrConfig(**tiny_config)
    train(_args(data, out), config)
    os.replace(out / "model", out / ".model.new")  # killed between the renames of its model swap
    train(_args(data, out, overwrite=True), config)
    (aside,) = out.glob("replaced-*")
    assert (aside / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_resume_writes_only_into_its_own_run_or_a_new_folder(tiny_config, data, tmp_path):
    config = DeformableDetrConfig(**tiny_config)
    first, second = tmp_path / "first", tmp_path / "second"
    train(_args(data, first), config)
    train(_args(data, second), config)
    with pytest.raises(OutputConflict, match=r"--out .*second.* holds a training run"):
        train(_args(data, second, epochs=2, resume=str(first)), None)
    with pytest.raises(OutputConflict, match="--overwrite with --resume"):
        train(_args(data, first, epochs=2, resume=str(first), overwrite=True), None)
    train(_args(data, tmp_path / "fork", epochs=2, resume=str(first / STATE_FILE)), None)
    assert load_training_state(tmp_path / "fork")["epoch"] == 2 and load_training_state(first)["epoch"] == 1


def test_the_run_folder_is_never_inside_the_dataset(tiny_config, data):
    with pytest.raises(OutputConflict, match=r"lies in the dataset --data"):
        train(_args(data, data / "runs" / "x"), DeformableDetrConfig(**tiny_config))
    assert not (data / "runs").exists()


# -------------------------------------------------------------------------- one writer at a time
_HOLDER = """
import sys, time
from pathlib import Path
from models.engine.run_folder import folder_lock
with folder_lock(sys.argv[1], command="holder-for-test"):
    Path(sys.argv[2]).write_text("ready")
    time.sleep(600)
"""


def _start_holder(folder: Path, ready: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(ready)], cwd=ROOT)
    for _ in range(1200):  # wait for it to hold the lock (up to 2 minutes on a loaded machine)
        if ready.exists() or holder.poll() is not None:
            break
        time.sleep(0.1)
    assert ready.exists(), "the lock holder did not start"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tiny_config, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = _start_holder(out, tmp_path / "ready")
    try:
        with pytest.raises(FolderInUse, match=rf"pid {holder.pid} on host .*started .*running 'holder-for-test'"):
            train(_args(data, out), DeformableDetrConfig(**tiny_config))
        assert not (out / STATE_FILE).exists() and not (out / "train_args.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies without releasing: its record stays behind
        holder.wait()
    assert (out / run_folder.LOCK_NAME).exists()
    with pytest.warns(UserWarning, match=rf"taking over the lock left by pid {holder.pid}.*holder-for-test"):
        with folder_lock(out, command="me"):
            record = json.loads((out / run_folder.LOCK_NAME).read_text())
            assert record["pid"] == os.getpid() and record["command"] == "me" and record["host"] and record["started"]
    assert not (out / run_folder.LOCK_NAME).exists()


def test_the_lock_is_released_on_errors_and_ctrl_c(tmp_path):
    for error in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with folder_lock(tmp_path):
                raise error
        assert not (tmp_path / run_folder.LOCK_NAME).exists()
    with folder_lock(tmp_path):  # and it can be taken again in the same process, once released
        with pytest.raises(FolderInUse, match=f"pid {os.getpid()}"):
            with folder_lock(tmp_path):
                pass


# --------------------------------------------------------------------------------- divergence
def test_nan_loss_before_the_first_checkpoint_says_there_is_none(tiny_config, data, tmp_path, monkeypatch):
    real_forward = DeformableDetrForObjectDetection.forward

    def diverging_forward(self, *args, **kwargs):
        outputs = real_forward(self, *args, **kwargs)
        outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(DeformableDetrForObjectDetection, "forward", diverging_forward)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(_args(data, out), DeformableDetrConfig(**tiny_config))
    assert "loss is nan at epoch 1, step 1" in str(info.value) and "before the first checkpoint" in str(info.value)
    assert "intact" not in str(info.value) and not (out / STATE_FILE).exists()


def test_nan_sampling_offsets_stop_training_as_a_divergence(tiny_config, data, tmp_path, monkeypatch):
    real_build = training.build_detector

    def build_with_nan_offsets(*args, **kwargs):
        model = real_build(*args, **kwargs)
        for name, param in model.named_parameters():
            if "sampling_offsets.bias" in name:
                torch.nn.init.constant_(param, float("nan"))
        return model

    monkeypatch.setattr(training, "build_detector", build_with_nan_offsets)
    with pytest.raises(TrainingDiverged, match=r"(loss is nan|weights are NaN or infinite \(.*sampling_offsets).* at epoch 1, step 1"):
        train(_args(data, tmp_path / "run"), DeformableDetrConfig(**tiny_config))


def test_nan_predictions_from_finite_weights_stop_training_as_a_divergence(tiny_config, data, tmp_path, monkeypatch):
    """Activations that overflow (finite weights, NaN boxes) make the matching impossible: that is a
    divergence too, not a raw ValueError."""
    real_forward = training.build_detector

    def build_with_overflowing_boxes(*args, **kwargs):
        model = real_forward(*args, **kwargs)
        model.bbox_embed[0].layers[-1].register_forward_hook(lambda module, inputs, output: output * float("inf"))
        return model

    monkeypatch.setattr(training, "build_detector", build_with_overflowing_boxes)
    with pytest.raises(TrainingDiverged, match=r"predictions are NaN or infinite at epoch 1, step 1"):
        train(_args(data, tmp_path / "run"), DeformableDetrConfig(**tiny_config))


def test_an_update_that_makes_the_weights_nan_is_never_saved_over_the_last_checkpoint(tiny_config, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = DeformableDetrConfig(**tiny_config)
    train(_args(data, out), config)
    saved = (out / STATE_FILE).read_bytes()
    real_build = training.build_optimization

    def poisoning_optimization(args, model, device):
        optimization = real_build(args, model, device)
        real_step = optimization.optimizer.step

        def step(*a, **k):
            result = real_step(*a, **k)
            with torch.no_grad():
                model.class_embed[0].bias.fill_(float("nan"))  # the loss of this step was finite
            return result

        optimization.optimizer.step = step
        return optimization

    monkeypatch.setattr(training, "build_optimization", poisoning_optimization)
    with pytest.raises(TrainingDiverged, match=r"weights are NaN or infinite \(.*class_embed.*\) after epoch 2, step 2; this epoch is not saved: .*is intact"):
        train(_args(data, out, epochs=2, resume=str(out)), None)
    assert (out / STATE_FILE).read_bytes() == saved and _epochs(out) == [1]


# ---------------------------------------------------------------------------- settings, config
def test_device_names_are_checked_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"device must be one of auto, cpu, cuda, cuda:N or mps, got 'tpu'"):
        TrainingArgs(data="d", out="o", device="tpu").validate()
    TrainingArgs(data="d", out="o", device="cuda:1").validate()


def test_dino_denoising_labels_are_checked_against_the_datasets_classes(data, tmp_path):
    fields = {"backbone": "resnet18", "backbone_out_indices": [2], "num_feature_levels": 2, "d_model": 32, "encoder_layers": 1,
              "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
              "decoder_ffn_dim": 32, "num_queries": 8, "dn_number": 4, "use_pretrained_backbone": False, "dn_labelbook_size": 3}
    result = train(_args(data, tmp_path / "run", model="dino"), fields)  # 3 classes in the data: 3 denoising labels fit
    assert result["model"].config.num_labels == 3 and result["model"].config.dn_labelbook_size == 3
    with pytest.raises(ValueError, match=r"dn_labelbook_size must be None or an int >= num_labels \(3\), got 2"):
        train(_args(data, tmp_path / "other", model="dino"), {**fields, "dn_labelbook_size": 2})


def test_a_new_run_without_a_config_builds_its_familys_defaults(tiny_config, data, tmp_path, monkeypatch):
    built = {}

    def record(config, model=None):
        built["config"], built["model"] = config, model
        raise KeyboardInterrupt  # stop before the (paper-size) model is built

    monkeypatch.setattr(training, "build_detector", record)
    with pytest.raises(KeyboardInterrupt):
        train(_args(data, tmp_path / "run", model="dino"), None)
    assert type(built["config"]).__name__ == "DinoConfig" and built["config"].num_labels == 3


# ------------------------------------------------------------------------------ loading weights
@pytest.fixture
def saved(tiny_config, tmp_path):
    """A tiny detector with trained-looking (all distinct) weights, saved; returns (folder, config fields)."""
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**tiny_config, num_labels=3))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", {**tiny_config, "num_labels": 3}


def _edit_weights(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_or_bool_weights_are_refused_naming_the_key(saved, dtype):
    folder, _ = saved
    _edit_weights(folder, lambda t: t.update({"class_embed.0.bias": t["class_embed.0.bias"].to(dtype)}))
    with pytest.raises(UnfitWeightsError, match=rf"class_embed\.0\.bias \({dtype}, the model's is torch.float32\)"):
        DeformableDetrForObjectDetection.from_pretrained(folder)


def test_nan_or_inf_weights_are_refused_naming_the_keys(saved):
    folder, _ = saved

    def poison(tensors):
        tensors["class_embed.0.bias"][1] = float("nan")
        tensors["model.level_embed"][0, 0] = float("inf")

    _edit_weights(folder, poison)
    with pytest.raises(UnfitWeightsError, match=r"NaN or inf values: .*class_embed\.0\.bias \(1 of 3 values\)") as info:
        DeformableDetrForObjectDetection.from_pretrained(folder)
    assert "model.level_embed (1 of" in str(info.value)


@pytest.mark.parametrize("change, setting", [
    ({"num_feature_levels": 1}, "num_feature_levels: the weights were trained with 2 feature levels, the config builds 1"),
    ({"two_stage": False}, "two_stage: the weights have the two-stage proposal layers"),
    ({"two_stage": False, "with_box_refine": False}, "with_box_refine: the weights have one box head per decoder layer"),
])
def test_weights_of_another_variant_name_the_setting(saved, change, setting):
    folder, fields = saved
    with pytest.raises(CheckpointMismatchError) as info:
        DeformableDetrForObjectDetection.from_pretrained(folder, config=DeformableDetrConfig(**{**fields, **change}))
    assert setting in info.value.message and setting in str(info.value)
    assert "strict=False" not in info.value.message  # what a command line shows; Python callers also get the option
    shared = folder.parent / "shared"
    DeformableDetrForObjectDetection(DeformableDetrConfig(**{**fields, "two_stage": False, "with_box_refine": False})).save_pretrained(shared)
    with pytest.raises(CheckpointMismatchError, match="with_box_refine: the weights have one shared box head, the config sets with_box_refine=True"):
        DeformableDetrForObjectDetection.from_pretrained(shared, config=DeformableDetrConfig(**{**fields, "two_stage": False}))


class _BlockedPayload:
    """Unpickles as a call of ``os.system`` (a module torch's safe loader blocks): never run here."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_blocked_pickle_payload_is_named_as_such_not_as_corrupt(tmp_path):
    path = tmp_path / "payload.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _BlockedPayload()}, path)
    with pytest.raises(UntrustedPickleError, match=r"holds Python objects besides tensors \((posix|nt)\.system\).*trust_pickle=True.*--trust-pickle"):
        torch_load_file(path, "original-repository checkpoint")
    state = tmp_path / STATE_FILE
    torch.save({"format": training.STATE_FORMAT, "x": _BlockedPayload()}, state)
    with pytest.raises(ValueError, match=r"holds Python objects \((posix|nt)\.system\).*could run code") as info:
        load_training_state(state)
    assert "corrupt" not in str(info.value)


_DDP_WORKER = """
import sys, json, torch
torch.set_num_threads(1)
from models import DeformableDetrConfig
from models.engine.training import TrainingArgs, train
args = TrainingArgs(data=sys.argv[2], out=sys.argv[3], epochs=1, max_steps_per_epoch=1, batch_size=2, eval_batch_size=2,
                    num_workers=0, image_size=48, max_size=48, progress=False, multiscale=False)
try:
    train(args, DeformableDetrConfig(**json.loads(sys.argv[1])))
except ValueError as err:
    print("refused:", err)
    sys.exit(3)
"""


def test_under_torchrun_every_rank_stops_on_rank_0s_refusal(tiny_config, data, tmp_path):
    """Rank 0 alone checks and locks the run folder; the other ranks learn its refusal instead of waiting for it."""
    out = tmp_path / "run"
    train(_args(data, out), DeformableDetrConfig(**tiny_config))
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               json.dumps(tiny_config), str(data), str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stdout.count("refused:") == 2 and done.stdout.count("holds a training run (finished: 1 of 1 epochs)") == 2, done.stdout + done.stderr[-2000:]
    assert _epochs(out) == [1]
