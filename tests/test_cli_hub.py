"""``--checkpoint OWNER/NAME``: a Hugging Face Hub repo id, read from the huggingface_hub cache
(offline here: the cache is filled by the test), for both model families."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from models import DeformableDetrConfig, DeformableDetrForObjectDetection, DinoConfig, DinoForObjectDetection
from models.cli.main import main
from models.engine.training import make_processor

DINO_TINY = {"backbone": "resnet18", "backbone_out_indices": [2], "num_feature_levels": 2, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 6, "num_labels": 3}


@pytest.mark.parametrize("family", ["deformable-detr", "dino"])
def test_detect_with_a_hub_repo_id(family, tiny_config, offline_hub, tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    torch.manual_seed(0)
    model = DinoForObjectDetection(DinoConfig(**DINO_TINY)) if family == "dino" else DeformableDetrForObjectDetection(DeformableDetrConfig(**tiny_config))
    model.save_pretrained(folder)
    make_processor(48, 64).save_pretrained(folder)
    offline_hub("tiny-org/tiny-detector", folder)
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)

    assert main(["detect", str(image), "--checkpoint", "tiny-org/tiny-detector", "--out", str(tmp_path / "out"), "--threshold", "0"]) == 0
    record = json.loads((tmp_path / "out" / "image.json").read_text())
    assert record["detections"] and all(len(d["box"]) == 4 and d["box"][2] >= d["box"][0] for d in record["detections"])
    assert {d["label_id"] for d in record["detections"]} <= {0, 1, 2}


def test_an_uncached_repo_id_is_one_line_naming_it(offline_hub, tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["detect", str(image), "--checkpoint", "nobody/not-cached", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "nobody/not-cached" in error[0] and "Hub" in error[0]
