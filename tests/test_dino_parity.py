"""DINO against the original code: checkpoints written by the authors' training script, with random
weights, give the same logits and boxes (1e-4) as the original model computed on the same inputs.

The fixtures (tests/fixtures/dino, made by tests/fixtures/dino/generate.py from the original source)
use a narrow ResNet with resnet50's module tree so that they stay small; the test builds the same
network and passes it in as the backbone body.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models import DinoConfig, DinoForObjectDetection
from tests.conftest import narrow_resnet_body

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dino"
CONFIGS = sorted(path.name for path in FIXTURES.iterdir() if (path / "checkpoint.pth").is_file())


def _load(name: str) -> tuple[DinoForObjectDetection, dict, dict]:
    folder = FIXTURES / name
    args = json.loads((folder / "args.json").read_text())
    model, report = DinoForObjectDetection.from_pretrained(
        folder / "checkpoint.pth", backbone_body=narrow_resnet_body(args), trust_pickle=True, output_loading_info=True
    )
    return model.float(), load_file(folder / "expected.safetensors"), {"args": args, "report": report}


def test_fixtures_are_there():
    assert len(CONFIGS) >= 3, f"expected at least three DINO fixtures in {FIXTURES}, found {CONFIGS}"


@pytest.mark.parametrize("name", CONFIGS)
def test_original_checkpoint_gives_the_original_outputs(name):
    model, expected, info = _load(name)
    assert info["report"].clean, info["report"].describe()
    with torch.no_grad():
        out = model(expected["pixel_values"], expected["pixel_mask"].long())
    torch.testing.assert_close(out.logits, expected["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pred_boxes, expected["pred_boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.enc_topk_logits, expected["interm_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.enc_topk_boxes, expected["interm_pred_boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_comes_from_the_original_args(name):
    model, expected, info = _load(name)
    args = info["args"]
    config = model.config
    assert isinstance(config, DinoConfig)
    assert (config.num_queries, config.encoder_layers, config.decoder_layers) == (args["num_queries"], args["enc_layers"], args["dec_layers"])
    assert (config.num_feature_levels, config.decoder_n_points, config.encoder_attention_heads) == (args["num_feature_levels"], args["dec_n_points"], args["nheads"])
    assert config.num_labels == expected["logits"].shape[-1]
    assert (config.dec_pred_class_embed_share, config.two_stage_class_embed_share) == (args["dec_pred_class_embed_share"], args["two_stage_class_embed_share"])


@pytest.mark.parametrize("name", CONFIGS[:1])
def test_save_pretrained_round_trips(name, tmp_path):
    model, expected, info = _load(name)
    model.save_pretrained(tmp_path)
    again = DinoForObjectDetection.from_pretrained(tmp_path, backbone_body=narrow_resnet_body(info["args"]))
    assert again.config == model.config
    with torch.no_grad():
        first = model(expected["pixel_values"], expected["pixel_mask"].long())
        second = again(expected["pixel_values"], expected["pixel_mask"].long())
    torch.testing.assert_close(second.logits, first.logits, atol=0, rtol=0)
    torch.testing.assert_close(second.pred_boxes, first.pred_boxes, atol=0, rtol=0)


def test_unsupported_original_options_are_named(tmp_path):
    folder = FIXTURES / CONFIGS[0]
    checkpoint = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=False)
    checkpoint["args"].decoder_sa_type = "ca_label"
    checkpoint["args"].num_patterns = 2
    path = tmp_path / "odd.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="decoder_sa_type='ca_label'.*num_patterns=2"):
        DinoForObjectDetection.from_pretrained(path, trust_pickle=True)
