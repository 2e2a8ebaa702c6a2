"""``deformable-detr quantize``: the int8 copy of a checkpoint, then ``detect`` and ``eval`` on it.

The int8 graph runs eagerly here (``compile=False`` patched in; the compiled path is the one
``tests/test_quantization_docs.py`` and ``benchmarks/bench_int8*.py`` run), so the test stays fast.
"""

from __future__ import annotations

import functools
import json

import pytest

pytest.importorskip("torchao")

import models.quantization as quantization  # noqa: E402
from models.cli.main import main  # noqa: E402
from models.cli.presets import DEMO_SPEC  # noqa: E402
from models.data.synthetic import write_synthetic_coco  # noqa: E402


@pytest.fixture
def eager_int8(monkeypatch):
    monkeypatch.setattr(quantization, "quantize_to_folder", functools.partial(quantization.quantize_to_folder, compile=False))
    monkeypatch.setattr(quantization, "load_quantized", functools.partial(quantization.load_quantized, compile=False))


def test_quantize_then_detect_and_eval(tmp_path, eager_int8, capsys):
    data = tmp_path / "data"
    write_synthetic_coco(data, {"train": 6, "val": 4}, DEMO_SPEC, seed=3)
    out = tmp_path / "int8"
    assert main(["quantize", "--checkpoint", "demo", "--calibration", str(data / "images" / "train"), "--out", str(out)]) == 0
    assert quantization.is_quantized_checkpoint(out)
    assert json.loads((out / "config.json").read_text())["quantization"]["fields"][:2] == ["logits", "pred_boxes"]
    assert main(["detect", str(data / "images" / "val"), "--checkpoint", str(out), "--threshold", "0.3", "--out", str(tmp_path / "det")]) == 0
    assert len(list((tmp_path / "det").glob("*.json"))) == 4
    assert main(["eval", "--data", str(data), "--split", "val", "--checkpoint", str(out), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50"} <= set(metrics)
    capsys.readouterr()
    # a quantized checkpoint has a fixed model and input size: flags that would change them are refused
    assert main(["detect", str(data / "images" / "val"), "--checkpoint", str(out), "--image-size", "96", "--out", str(tmp_path / "d2")]) == 2
    assert "--image-size" in capsys.readouterr().err
    # calibration images are inputs: the output folder is never theirs
    assert main(["quantize", "--checkpoint", "demo", "--calibration", str(data / "images" / "train"), "--out", str(data / "images" / "train")]) == 2
    assert "quantize" in capsys.readouterr().err


def test_quantize_a_dino_checkpoint_then_detect(tmp_path, eager_int8):
    import torch

    from models import DinoConfig, DinoForObjectDetection
    from models.cli.presets import DEMO_DINO_CONFIG
    from models.engine.training import make_processor

    torch.manual_seed(0)
    folder = tmp_path / "dino"
    config = DinoConfig(**{**DEMO_DINO_CONFIG, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
                           "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 8},
                        id2label={0: "circle", 1: "square", 2: "triangle"})
    DinoForObjectDetection(config).save_pretrained(folder)
    make_processor(64, 64).save_pretrained(folder)
    data = tmp_path / "data"
    write_synthetic_coco(data, {"train": 4, "val": 2}, DEMO_SPEC, seed=5)
    out = tmp_path / "int8"
    assert main(["quantize", "--checkpoint", str(folder), "--calibration", str(data / "images" / "train"), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "dino"
    assert main(["detect", str(data / "images" / "val"), "--checkpoint", str(out), "--out", str(tmp_path / "det")]) == 0
    assert len(list((tmp_path / "det").glob("*.png"))) == 2
