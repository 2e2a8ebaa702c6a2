"""RT-DETR against the authors' code (lyuwenyu/RT-DETR, ``rtdetr_pytorch``): checkpoints in the
format their solver writes, with random weights, give the same logits, boxes, detections (1e-4)
and training loss as their model computed on the same inputs.

The fixtures (tests/fixtures/rt_detr_original, made by its generate.py from the authors' source) use
a narrow PResNet with the full network's key names; the test describes it with ``backbone_config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models import RTDetrConfig, RTDetrForObjectDetection, RTDetrModel
from models.processing.postprocess import post_process_object_detection
from models.rt_detr.checkpoints import config_from_original_args, convert_original_state_dict, read_original_yaml
from models.rt_detr.variant_table import RT_DETR_VARIANTS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rt_detr_original"
CONFIGS = sorted(path.name for path in FIXTURES.iterdir() if (path / "checkpoint.pth").is_file())


def _yaml(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def _config(name: str) -> RTDetrConfig:
    """The config of a fixture: from its YAML, with the narrow backbone it was built with."""
    yaml = _yaml(name)
    narrow = yaml["fixture_backbone"]
    backbone = {"layer_type": narrow["block"], "depths": narrow["blocks"], "hidden_sizes": narrow["stage_out_channels"],
                "embedding_size": narrow["stem_channels"], "out_indices": [i + 1 for i in yaml["PResNet"]["return_idx"]]}
    num_labels = torch.load(FIXTURES / name / "checkpoint.pth", weights_only=True)["ema"]["module"]["decoder.dec_score_head.0.weight"].shape[0]
    return config_from_original_args(yaml, num_labels, backbone_config=backbone)


def _load(name: str, cls=RTDetrForObjectDetection):
    model, report = cls.from_pretrained(FIXTURES / name / "checkpoint.pth", config=_config(name), output_loading_info=True)
    return model, report, load_file(FIXTURES / name / "expected.safetensors")


def test_fixtures_are_there():
    assert CONFIGS == ["r18vd", "r50vd"], f"expected the r18vd and r50vd fixtures in {FIXTURES}, found {CONFIGS}"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_of_the_authors_checkpoint_is_converted(name):
    state_dict = torch.load(FIXTURES / name / "checkpoint.pth", weights_only=True)["ema"]["module"]
    converted, unmapped = convert_original_state_dict(state_dict)
    assert unmapped == []
    model = RTDetrForObjectDetection(_config(name))
    assert set(converted) == set(model.state_dict())
    # the decoder's and the AIFI layers' stacked q/k/v projections are split in order
    q, k, v = state_dict["decoder.decoder.layers.0.self_attn.in_proj_weight"].chunk(3)
    assert torch.equal(converted["model.decoder.layers.0.self_attn.q_proj.weight"], q)
    assert torch.equal(converted["model.decoder.layers.0.self_attn.v_proj.weight"], v)
    assert torch.equal(converted["model.encoder.encoder.0.layers.0.self_attn.k_proj.bias"],
                       state_dict["encoder.encoder.0.layers.0.self_attn.in_proj_bias"].chunk(3)[1])


@pytest.mark.parametrize("name", CONFIGS)
def test_authors_checkpoint_gives_the_authors_outputs(name):
    model, report, expected = _load(name)
    assert report.clean, report.describe()
    with torch.no_grad():
        out = model(expected["pixel_values"].float())
    torch.testing.assert_close(out.logits, expected["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pred_boxes, expected["pred_boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_authors_checkpoint_gives_the_authors_detections(name):
    model, _, expected = _load(name)
    with torch.no_grad():
        out = model(expected["pixel_values"].float())
    sizes = expected["orig_target_sizes"]  # the authors' (width, height)
    detections = post_process_object_detection(out, threshold=0.0, target_sizes=sizes.flip(-1), top_k=_yaml(name)["RTDETRPostProcessor"]["num_top_queries"])
    for index, found in enumerate(detections):
        scale = sizes[index].repeat(2).float()
        assert torch.equal(found["labels"], expected["det_labels"][index])
        torch.testing.assert_close(found["scores"], expected["det_scores"][index], atol=1e-4, rtol=0)
        torch.testing.assert_close(found["boxes"] / scale, expected["det_boxes"][index] / scale, atol=1e-4, rtol=0)


def test_authors_training_loss():
    """One training step of the r50vd fixture (no denoising): every weighted loss term of the
    authors' criterion, ``_aux_<i>`` being our ``_<i>`` and, for the last, ``_interm``."""
    model, _, expected = _load("r50vd")
    targets = [{"class_labels": expected[f"target.{i}.labels"], "boxes": expected[f"target.{i}.boxes"]} for i in range(2)]
    model.train()
    with torch.no_grad():
        losses = model(expected["pixel_values"].float(), labels=targets).loss_dict
    config = model.config
    weights = {"loss_vfl": config.weight_loss_vfl, "loss_bbox": config.weight_loss_bbox, "loss_giou": config.weight_loss_giou}
    theirs = {key[len("loss."):]: value for key, value in expected.items() if key.startswith("loss.")}
    last_aux = config.decoder_layers - 1
    ours = {}
    for key, value in losses.items():
        if key in weights:
            ours[key] = value * weights[key]
            continue
        term, suffix = key.rsplit("_", 1)
        ours[f"{term}_aux_{last_aux if suffix == 'interm' else suffix}"] = value * weights[term]
    assert set(ours) == set(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=0, msg=key)


def test_bare_model_loads_the_authors_checkpoint():
    with pytest.warns(UserWarning, match="no detection heads"):
        model, report, _ = _load("r18vd", RTDetrModel)
    assert not report.missing_keys


def test_ema_weights_are_preferred_and_model_weights_load_too(tmp_path):
    module = torch.load(FIXTURES / "r18vd" / "checkpoint.pth", weights_only=True)["ema"]["module"]
    noise = {key: torch.zeros_like(value) for key, value in module.items()}
    torch.save({"model": noise, "ema": {"module": module, "updates": 1}, "last_epoch": 3}, tmp_path / "both.pth")
    torch.save({"model": module, "last_epoch": 3}, tmp_path / "model.pth")
    expected = load_file(FIXTURES / "r18vd" / "expected.safetensors")
    for path in (tmp_path / "both.pth", tmp_path / "model.pth"):
        model = RTDetrForObjectDetection.from_pretrained(path, config=_config("r18vd"))
        with torch.no_grad():
            logits = model(expected["pixel_values"].float()).logits
        torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)


def test_the_authors_checkpoint_needs_a_config():
    with pytest.raises(ValueError, match="pass config="):
        RTDetrForObjectDetection.from_pretrained(FIXTURES / "r18vd" / "checkpoint.pth")


@pytest.mark.parametrize(("section", "field", "value"), [
    ("RTDETRTransformer", "eval_idx", 2),
    ("HybridEncoder", "depth_mult", 0.67),
    ("PResNet", "variant", "b"),
    ("RTDETRTransformer", "dropout", 0.1),
    ("RTDETR", "backbone", "RegNet"),
    (None, "use_focal_loss", False),
])
def test_unsupported_options_are_refused_by_name(section, field, value):
    yaml = _yaml("r50vd")
    if section is None:
        yaml[field] = value
    else:
        yaml[section][field] = value
    with pytest.raises(ValueError, match=rf"{section + '.' if section else ''}{field}={value!r}".replace("(", r"\(").replace(".", r"\.")):
        config_from_original_args(yaml, 20)


def test_several_unsupported_options_are_all_named():
    yaml = _yaml("r50vd")
    yaml["RTDETRTransformer"]["eval_idx"] = 0
    yaml["PResNet"]["act"] = "silu"
    with pytest.raises(ValueError, match="PResNet.act='silu'.*RTDETRTransformer.eval_idx=0"):
        config_from_original_args(yaml, 20)


# The authors' recipes (configs/rtdetr/*.yml merged with include/rtdetr_r50vd.yml): the fields that
# differ from the R50-vd include, per size.
_R50VD = {
    "PResNet": {"depth": 50, "variant": "d", "freeze_at": 0, "return_idx": [1, 2, 3], "num_stages": 4, "freeze_norm": True},
    "HybridEncoder": {"in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256, "use_encoder_idx": [2],
                      "num_encoder_layers": 1, "nhead": 8, "dim_feedforward": 1024, "dropout": 0.0, "enc_act": "gelu",
                      "pe_temperature": 10000, "expansion": 1.0, "depth_mult": 1, "act": "silu", "eval_spatial_size": [640, 640]},
    "RTDETRTransformer": {"feat_channels": [256, 256, 256], "feat_strides": [8, 16, 32], "hidden_dim": 256, "num_levels": 3,
                          "num_queries": 300, "num_decoder_layers": 6, "num_denoising": 100, "eval_idx": -1, "eval_spatial_size": [640, 640]},
    "use_focal_loss": True,
    "SetCriterion": {"weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["vfl", "boxes"], "alpha": 0.75, "gamma": 2.0,
                     "matcher": {"type": "HungarianMatcher", "weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "alpha": 0.25, "gamma": 2.0}},
}
_RECIPES = {
    "r18vd": {"PResNet": {"depth": 18, "freeze_at": -1, "freeze_norm": False}, "HybridEncoder": {"in_channels": [128, 256, 512], "expansion": 0.5},
              "RTDETRTransformer": {"num_decoder_layers": 3}},
    "r34vd": {"PResNet": {"depth": 34, "freeze_at": -1, "freeze_norm": False}, "HybridEncoder": {"in_channels": [128, 256, 512], "expansion": 0.5},
              "RTDETRTransformer": {"num_decoder_layers": 4}},
    "r50vd": {},
    "r101vd": {"PResNet": {"depth": 101}, "HybridEncoder": {"hidden_dim": 384, "dim_feedforward": 2048},
               "RTDETRTransformer": {"feat_channels": [384, 384, 384]}},
}


@pytest.mark.parametrize("name", sorted(_RECIPES))
def test_the_authors_recipes_are_our_sizes(name, tmp_path):
    """Their YAML (written as include + file, read back with read_original_yaml) gives the
    architecture of our variant of the same name."""
    yaml = pytest.importorskip("yaml")
    (tmp_path / "include.yml").write_text(yaml.safe_dump(_R50VD))
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump({"__include__": ["./include.yml"], **_RECIPES[name]}))
    config = config_from_original_args(read_original_yaml(tmp_path / "recipe.yml"), 80)
    ours = RTDetrConfig(num_labels=80, **RT_DETR_VARIANTS[name])
    for field in ("backbone_config", "encoder_in_channels", "encoder_hidden_dim", "encoder_ffn_dim", "hidden_expansion", "decoder_in_channels",
                  "decoder_layers", "d_model", "num_queries", "num_feature_levels", "decoder_n_points", "num_denoising", "encode_proj_layers",
                  "encoder_layers", "weight_loss_vfl", "weight_loss_bbox", "weight_loss_giou", "focal_loss_alpha", "matcher_alpha",
                  "matcher_class_cost", "matcher_bbox_cost", "matcher_giou_cost", "label_noise_ratio", "box_noise_scale"):
        assert getattr(config, field) == getattr(ours, field), field
    assert config.freeze_backbone_batch_norms == (name not in ("r18vd", "r34vd"))
    assert config.anchor_image_size == config.eval_size == [640, 640]
