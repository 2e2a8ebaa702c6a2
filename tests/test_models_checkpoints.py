"""Checkpoints: the original repository's .pth layout, class-count changes, key reporting."""

import argparse
import re
import warnings

import pytest
import torch

import models
from models import DeformableDetrForObjectDetection
from models.common.checkpoint_files import read_state_dict
from models.ddetr.checkpoints import convert_original_state_dict

SMALL = dict(
    backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, two_stage_num_proposals=10, num_labels=5, dropout=0.0,
)

# Our name -> the original repository's name, written out from its models/deformable_transformer.py
# and models/modeling.py (independent of models/checkpoints.py).
TO_ORIGINAL = [
    (r"^model\.backbone\.conv_encoder\.model\.", "backbone.0.body."),
    (r"^model\.level_embed$", "transformer.level_embed"),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^model\.encoder\.layers\.(\d+)\.fc1\.", r"transformer.encoder.layers.\1.linear1."),
    (r"^model\.encoder\.layers\.(\d+)\.fc2\.", r"transformer.encoder.layers.\1.linear2."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", r"transformer.encoder.layers.\1.self_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^model\.decoder\.layers\.(\d+)\.fc1\.", r"transformer.decoder.layers.\1.linear1."),
    (r"^model\.decoder\.layers\.(\d+)\.fc2\.", r"transformer.decoder.layers.\1.linear2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.decoder.layers.\1.self_attn.out_proj."),
    (r"^model\.decoder\.(bbox_embed|class_embed)\.", r"transformer.decoder.\1."),
    (r"^model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.", r"transformer.\1."),
    (r"^model\.query_position_embeddings\.weight$", "query_embed.weight"),
    (r"^model\.input_proj\.", "input_proj."),
    (r"^(class_embed|bbox_embed)\.", r"\1."),
]


def to_original(model):
    state = model.state_dict()
    original = {}
    for key, tensor in state.items():
        split = re.match(r"^model\.decoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", key)
        if split:
            layer, kind = split.groups()
            parts = [state[f"model.decoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            original[f"transformer.decoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat(parts).clone()
            continue
        if re.match(r"^model\.decoder\.layers\.\d+\.self_attn\.[kv]_proj\.", key):
            continue
        for pattern, replacement in TO_ORIGINAL:
            if re.match(pattern, key):
                original[re.sub(pattern, replacement, key)] = tensor.clone()
                break
        else:
            raise AssertionError(f"test mapping misses {key}")
    original["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(0)
    return original


def randomised(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


@pytest.mark.parametrize("factory", ["deformable_detr", "deformable_detr_box_refine", "deformable_detr_two_stage"])
def test_original_repository_checkpoint_loads_with_its_args(tmp_path, factory):
    source = randomised(getattr(models, factory)(**SMALL))
    config = source.config
    args = argparse.Namespace(
        backbone="resnet18", dilation=False, position_embedding="sine", num_feature_levels=4, enc_n_points=4, dec_n_points=4,
        with_box_refine=config.with_box_refine, two_stage=config.two_stage, hidden_dim=64, num_queries=10, enc_layers=1,
        dec_layers=2, dim_feedforward=64, nheads=4, dropout=0.0, aux_loss=True, masks=False,
    )
    torch.save({"model": to_original(source), "args": args, "epoch": 49}, tmp_path / "checkpoint.pth")
    loaded, report = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "checkpoint.pth", output_loading_info=True)
    assert report.clean, report.describe()
    assert loaded.config.num_labels == 5 and loaded.config.two_stage == config.two_stage
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = source(pixels), loaded(pixels)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes)


def test_original_checkpoint_without_args_needs_a_config(tmp_path):
    source = randomised(models.deformable_detr(**SMALL))
    torch.save({"model": to_original(source)}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="config="):
        DeformableDetrForObjectDetection.from_pretrained(tmp_path / "weights.pth")
    loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "weights.pth", config=source.config)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, source(pixels).logits)


def test_unmapped_original_keys_are_named():
    converted, unmapped = convert_original_state_dict({"transformer.mystery.weight": torch.zeros(1), "query_embed.weight": torch.zeros(2, 4)})
    assert unmapped == ["transformer.mystery.weight"] and "model.query_position_embeddings.weight" in converted


def test_other_class_count_raises_or_starts_fresh_heads(tmp_path):
    source = randomised(models.deformable_detr_box_refine(**SMALL))
    source.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        DeformableDetrForObjectDetection.from_pretrained(tmp_path, num_labels=7)
    with pytest.warns(UserWarning, match="class_embed"):
        fresh = DeformableDetrForObjectDetection.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert fresh.class_embed[0].weight.shape == (7, 64) and fresh.config.num_labels == 7
    torch.testing.assert_close(fresh.bbox_embed[1].layers[0].weight, source.bbox_embed[1].layers[0].weight)
    torch.testing.assert_close(fresh.model.level_embed, source.model.level_embed)


def test_missing_and_unexpected_keys_are_reported_by_name(tmp_path):
    source = randomised(models.deformable_detr(**SMALL))
    source.save_pretrained(tmp_path, safe_serialization=False)
    state = read_state_dict(tmp_path)
    assert "class_embed.0.weight" in state and "class_embed.1.weight" not in state  # shared head written once
    state.pop("model.level_embed")
    state["model.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(KeyError, match=r"model\.level_embed.*model\.extra\.weight|model\.extra\.weight.*model\.level_embed"):
        DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="model.level_embed"):
        loaded, report = DeformableDetrForObjectDetection.from_pretrained(tmp_path, strict=False, output_loading_info=True)
    assert report.missing_keys == ["model.level_embed"] and report.unexpected_keys == ["model.extra.weight"]


def test_save_and_load_round_trip_keeps_config_and_weights(tmp_path):
    source = randomised(models.deformable_detr_two_stage(**SMALL, id2label={i: f"c{i}" for i in range(5)}))
    source.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    written = loaded.config.to_dict()
    assert written.pop("architectures") == ["DeformableDetrForObjectDetection"]
    assert written == source.config.to_dict() and loaded.config.id2label[4] == "c4"
    source.config = source.config.copy(use_pretrained_backbone=True)
    source.save_pretrained(tmp_path / "again")
    assert models.DeformableDetrConfig.from_pretrained(tmp_path / "again").use_pretrained_backbone is False
    for (name, expected), actual in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)
