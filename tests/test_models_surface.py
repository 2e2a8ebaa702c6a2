"""One public surface: every family's detector and bare model take the same construction arguments
and load and save the same way (``from_pretrained``, ``save_pretrained(push_to_hub=...)``)."""

from __future__ import annotations

import inspect

import pytest
import torch

from models import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrModel, DinoConfig, DinoForObjectDetection, DinoModel
from models.backbones import build_backbone_body

SMALL = dict(backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
             encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10, num_labels=3, use_pretrained_backbone=False)
CASES = [
    (DeformableDetrForObjectDetection, DeformableDetrModel, lambda: DeformableDetrConfig(**SMALL, two_stage_num_proposals=10, two_stage=True, with_box_refine=True)),
    (DinoForObjectDetection, DinoModel, lambda: DinoConfig(**SMALL, dn_number=4)),
]


@pytest.mark.parametrize("detector_class,model_class,make_config", CASES)
def test_same_construction_arguments(detector_class, model_class, make_config):
    for cls, expected in ((detector_class, {"backbone_body", "query_selection", "groups", "criterion"}), (model_class, {"backbone_body", "query_selection", "groups"})):
        keyword_only = {name for name, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert keyword_only == expected, cls.__name__
        assert "push_to_hub" in inspect.signature(cls.save_pretrained).parameters, cls.__name__
        assert {"backbone_body", "strict", "trust_pickle"} <= set(inspect.signature(cls.from_pretrained).parameters), cls.__name__


@pytest.mark.parametrize("detector_class,model_class,make_config", CASES)
def test_bare_model_loads_the_detector_checkpoint_and_gives_its_decoder_states(tmp_path, detector_class, model_class, make_config):
    config = make_config()
    detector = detector_class(config).eval()
    detector.save_pretrained(tmp_path / "detector")
    bare = model_class.from_pretrained(tmp_path / "detector")
    bare.save_pretrained(tmp_path / "bare")
    again = model_class.from_pretrained(tmp_path / "bare")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = detector(pixels).last_hidden_state
        torch.testing.assert_close(bare(pixels).last_hidden_state, reference)
        torch.testing.assert_close(again(pixels).last_hidden_state, reference)


@pytest.mark.parametrize("detector_class,model_class,make_config", CASES)
def test_backbone_body_is_injected(detector_class, model_class, make_config):
    config = make_config()
    body = build_backbone_body(config)
    model = detector_class(config, backbone_body=body)
    assert model.model.backbone.conv_encoder.model is body


@pytest.mark.parametrize("detector_class,model_class,make_config", CASES)
def test_save_pretrained_refuses_hub_options_without_push(tmp_path, detector_class, model_class, make_config):
    with pytest.raises(TypeError, match="repo_id"):
        detector_class(make_config()).save_pretrained(tmp_path, repo_id="me/model")
