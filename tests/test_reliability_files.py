"""Reliability of what we write and read back: safe training states, crash points in the model-folder swap,
stale temporary files, resumes that agree with every record, full disks and unwritable outputs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import DeformableDetrConfig
from models.cli.demo import DEMO_SPEC
from models.cli.main import main
from models.data.synthetic import write_synthetic_coco
from models.engine import training
from models.engine.training import MODEL_DIR, STATE_FILE, TrainingArgs, load_training_state, recover_run_dir, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reldata")
    write_synthetic_coco(root, {"train": 4, "val": 2}, DEMO_SPEC, seed=2)
    return root


@pytest.fixture(scope="module")
def run(tiny_config, data, tmp_path_factory):
    """A finished one-epoch run (its folder is copied by tests that change it)."""
    out = tmp_path_factory.mktemp("relrun") / "run"
    train(_args(data, out), DeformableDetrConfig(**tiny_config))
    return out


def _args(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48,
                max_size=48, progress=False, max_steps_per_epoch=1, multiscale=False, seed=5)
    base.update(kw)
    return TrainingArgs(**base)


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ------------------------------------------------------------------------- 1: safe training states
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_crafted_training_state_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"format": training.STATE_FORMAT, "x": _Payload(str(marker))}, folder / STATE_FILE)
    with pytest.raises(ValueError, match=r"training_state.pt.*Python objects.*could run code"):
        load_training_state(folder)
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--checkpoint", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "could run code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_training_state_holds_only_tensors_and_plain_data(run):
    # weights_only=True reads it: the same reader a crafted file meets
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["format"] == training.STATE_FORMAT and state["epoch"] == 1
    assert state["metrics_line"]["epoch"] == 1 and state["evaluation"]["epoch"] == 1


# --------------------------------------------------------------------- 5: crash points, stale files
@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_model_swap_recovers_from_a_crash_at_each_rename(run, tmp_path, monkeypatch, crash_at):
    """export_model renames three times (tmp->new, model->old, new->model); kill it before each, then restart."""
    out = _copy(run, tmp_path / "run")
    before = (out / MODEL_DIR / "model.safetensors").read_bytes()
    calls = {"n": 0}
    real_replace = os.replace

    def crashing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    model = __import__("models").DeformableDetrForObjectDetection.from_pretrained(out / MODEL_DIR)
    torch.nn.init.constant_(model.class_embed[0].bias, 0.5)  # a different model to swap in
    monkeypatch.setattr(training.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        training.export_model(model, training.make_processor(48, 48), out / MODEL_DIR)
    monkeypatch.setattr(training.os, "replace", real_replace)
    notes = recover_run_dir(out)
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [] and (out / MODEL_DIR / "config.json").is_file()
    after = (out / MODEL_DIR / "model.safetensors").read_bytes()
    # before the model became complete (crash 1): the old one stays; once complete: the new one is put in place
    assert (after == before) == (crash_at == 1), notes
    __import__("models").DeformableDetrForObjectDetection.from_pretrained(out / MODEL_DIR)


def test_stale_temporary_files_are_cleaned_and_lost_metrics_line_restored(run, data, tmp_path):
    out = _copy(run, tmp_path / "run")
    (out / f".{STATE_FILE}.tmp999").write_bytes(b"partial")
    (out / "metrics.json.tmp").write_text("{")
    (out / ".model.tmp").mkdir()
    (out / ".model.old4242").mkdir()
    # a crash after the state was saved but before the metrics line was appended (and a torn line)
    (out / "metrics.jsonl").write_text('{"epoch": 1')
    train(_args(data, out, epochs=2, resume=str(out)), None)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 2


# -------------------------------------------------------------------------- 7: settings on resume
def test_resume_with_other_settings_is_refused_unless_allowed(run, data, tmp_path):
    out = _copy(run, tmp_path / "run")
    with pytest.raises(ValueError, match=r"image_size: checkpoint 48, now 64.*lr: checkpoint 0.0002, now 0.001.*--allow-change"):
        train(_args(data, out, epochs=2, resume=str(out), image_size=64, max_size=64, lr=1e-3), None)
    with pytest.raises(ValueError, match="allow_change: 'epochs'"):
        _args(data, out, allow_change=("epochs",)).validate()
    result = train(_args(data, out, epochs=2, resume=str(out), lr=1e-3, allow_change=("lr",)), None)
    state = load_training_state(out)
    recorded = json.loads((out / "train_args.json").read_text())["train_args"]
    assert state["train_args"]["lr"] == recorded["lr"] == 1e-3
    main_group = next(g for g in state["optimizer"]["param_groups"] if g["name"] == "main")
    assert main_group["lr"] == pytest.approx(1e-3) and main_group["initial_lr"] == pytest.approx(1e-3)
    assert result["epoch"] == 2
    # the preprocessor config always follows the run's own image size
    size = json.loads((out / MODEL_DIR / "preprocessor_config.json").read_text())["size"]
    assert size == {"shortest_edge": 48, "longest_edge": 48}


def test_train_command_names_allow_change(run, data, tmp_path, capsys):
    out = _copy(run, tmp_path / "run")
    common = ["train", "--data", str(data), "--out", str(out), "--resume", str(out), "--epochs", "2", "--max-steps-per-epoch", "1",
              "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress", "--batch-size", "2",
              "--eval-batch-size", "2", "--no-multiscale", "--seed", "5"]
    assert main([*common, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "lr: checkpoint 0.0002, now 0.5" in err and "--allow-change lr" in err and "Traceback" not in err


# -------------------------------------------------------------- 5/10: unwritable outputs, full disks
def test_eval_checks_out_before_predicting(run, data, tmp_path, capsys, monkeypatch):
    predicted = []
    monkeypatch.setattr("models.cli.commands.predict_dataset", lambda *a, **k: predicted.append(1) or [])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        assert main(["eval", "--data", str(data), "--checkpoint", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(a_file) in err and len(err.strip().splitlines()) == 1
    assert predicted == []


def test_read_only_output_is_one_line(run, data, tmp_path, capsys, monkeypatch):
    real_open = open

    def refusing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and ".write-test-" in str(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    out = tmp_path / "ro"
    for argv in (["eval", "--data", str(data), "--checkpoint", str(run), "--out", str(out)],
                 ["train", "--data", str(data), "--out", str(out), "--preset", "demo"],
                 ["make-data", "--out", str(out), "--train", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "permission denied" in err and str(out) in err and len(err.strip().splitlines()) == 1, argv


@pytest.fixture
def tiny_disk(tmp_path):
    """A 600 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_state(run, data, tiny_disk, tiny_config, capsys):
    out = tiny_disk / "run"
    config = tmp_config = tiny_disk.parent / "config.json"
    DeformableDetrConfig(**tiny_config).to_json_file(tmp_config)
    argv = ["train", "--data", str(data), "--out", str(out), "--config", str(config), "--epochs", "1", "--max-steps-per-epoch", "1",
            "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress", "--batch-size", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and str(out) in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if "error" in line]) == 1
    assert not list(out.glob(".*.tmp*"))  # no half-written temporary file stays behind


def test_disk_full_injected_at_the_write_call(tmp_path):
    """Where no tmpfs can be mounted: ENOSPC raised by the write itself still names the file and keeps the old one."""
    path = tmp_path / STATE_FILE
    training.atomic_torch_save({"v": torch.arange(3)}, path)

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    import builtins

    builtins_open = builtins.open
    try:
        builtins.open = lambda f, m="r", *a, **k: FullDisk(real_open(f, m, *a, **k)) if ".tmp" in str(f) else real_open(f, m, *a, **k)
        with pytest.raises(OSError) as info:
            training.atomic_torch_save({"v": torch.arange(5)}, path)
    finally:
        builtins.open = builtins_open
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert torch.equal(torch.load(path)["v"], torch.arange(3)) and [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


# ------------------------------------------------------------------------------ 10: SIGINT, NaN
def test_sigint_during_training_is_one_line_exit_130(data, tmp_path, tiny_config):
    """A real SIGINT to a training process: one line naming the checkpoint, status 130, no traceback."""
    config = tmp_path / "config.json"
    DeformableDetrConfig(**tiny_config).to_json_file(config)
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "import models.engine.training as t\n"
        "real = t.export_model\n"
        "def export_then_interrupt(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "t.export_model = export_then_interrupt\n"
        "from models.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["train", "--data", str(data), "--out", str(out), "--config", str(config), "--epochs", "3", "--max-steps-per-epoch", "1",
            "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress", "--batch-size", "2", "--threads", "1"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert f"interrupted, checkpoint at {str(out / STATE_FILE)!r}" in done.stderr
    assert load_training_state(out)["epoch"] == 1


def test_nan_loss_stops_with_one_line_and_exit_1(data, tmp_path, tiny_config, monkeypatch, capsys):
    from models.ddetr.modeling import DeformableDetrForObjectDetection

    real_forward = DeformableDetrForObjectDetection.forward

    def diverging_forward(self, *args, **kwargs):
        outputs = real_forward(self, *args, **kwargs)
        if outputs.loss is not None:
            outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(DeformableDetrForObjectDetection, "forward", diverging_forward)
    config = tmp_path / "config.json"
    DeformableDetrConfig(**tiny_config).to_json_file(config)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config), "--epochs", "1",
            "--image-size", "48", "--max-size", "48", "--num-workers", "0", "--no-progress", "--batch-size", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": warning:" not in line]
    assert "loss is nan at epoch 1, step 1" in err and len(lines) == 1 and lines[0].startswith("deformable-detr train: stopped:")
