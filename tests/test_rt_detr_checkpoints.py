"""RT-DETR checkpoints in ``transformers``' layout, both ways: a folder written by
``transformers``' ``save_pretrained`` loads here (detector and bare model, strict) with equal
outputs, ours loads there, configs read both ways; the factories build the published sizes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from models import RTDetrConfig, RTDetrForObjectDetection, RTDetrModel, rtdetr_r18vd, rtdetr_r34vd, rtdetr_r50vd, rtdetr_r101vd  # noqa: E402
from tests.conftest import tiny_rt_detr_fields  # noqa: E402

FIELDS = tiny_rt_detr_fields(num_denoising=7, id2label={0: "cat", 1: "dog", 2: "bird"}, num_labels=3)


def _theirs(cls):
    torch.manual_seed(0)
    model = cls(transformers.RTDetrConfig(**copy.deepcopy(FIELDS))).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed" in name or "head" in name:
                parameter.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("bare", [False, True])
def test_a_transformers_folder_loads_strictly_and_predicts_the_same(tmp_path, bare):
    theirs = _theirs(transformers.RTDetrModel if bare else transformers.RTDetrForObjectDetection)
    theirs.save_pretrained(tmp_path)
    ours, report = (RTDetrModel if bare else RTDetrForObjectDetection).from_pretrained(tmp_path, output_loading_info=True)
    assert not report.missing_keys and not report.unexpected_keys
    assert ours.config.id2label == {0: "cat", 1: "dog", 2: "bird"} and ours.config.num_denoising == 7
    pixels = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = theirs(pixel_values=pixels), ours(pixel_values=pixels)
    assert (actual.last_hidden_state - expected.last_hidden_state).abs().max() < 1e-4
    if not bare:
        assert (actual.logits - expected.logits).abs().max() < 1e-4


def test_a_detector_folder_loads_into_the_bare_model_with_a_warning_naming_the_heads(tmp_path):
    _theirs(transformers.RTDetrForObjectDetection).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="class_embed"):
        model = RTDetrModel.from_pretrained(tmp_path)
    assert model.decoder.class_embed is None


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_ours_loads_in_transformers(tmp_path, safe_serialization):
    torch.manual_seed(1)
    ours = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(FIELDS))).eval()
    ours.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "rt_detr" and written["architectures"] == ["RTDetrForObjectDetection"]
    theirs, info = transformers.RTDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    pixels = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        assert (ours(pixel_values=pixels).pred_boxes - theirs(pixel_values=pixels).pred_boxes).abs().max() < 1e-4
    again = RTDetrForObjectDetection.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_configs_read_both_ways(tmp_path):
    theirs = transformers.RTDetrConfig(**copy.deepcopy(FIELDS))
    theirs.save_pretrained(tmp_path)
    ours = RTDetrConfig.from_pretrained(tmp_path)
    assert ours.backbone_config["depths"] == [1, 1, 1, 1] and ours.encoder_in_channels == [32, 48, 64]
    ours.copy(num_queries=12).save_pretrained(tmp_path / "ours")
    back = transformers.RTDetrConfig.from_pretrained(tmp_path / "ours")
    assert back.num_queries == 12 and back.backbone_config.depths == [1, 1, 1, 1] and back.encoder_hidden_dim == 32
    assert RTDetrConfig().to_dict().keys() >= {k for k in transformers.RTDetrConfig().to_dict() if k not in ("dtype", "transformers_version")} - {
        "add_cross_attention", "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
        "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
        "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
        "forced_eos_token_id", "is_decoder", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups",
        "num_beams", "num_return_sequences", "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads",
        "remove_invalid_values", "repetition_penalty", "return_dict_in_generate", "sep_token_id", "suppress_tokens",
        "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class",
        "top_k", "top_p", "torchscript", "typical_p", "use_bfloat16", "_name_or_path", "torch_dtype",
    }


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("encoder_in_channels", [1, 2, 3], "encoder_in_channels"),
        ("normalize_before", True, "normalize_before"),
        ("backbone", "resnet50", "backbone"),
        ("encode_proj_layers", [5], "encode_proj_layers"),
        ("decoder_in_channels", [32, 32], "decoder_in_channels"),
        ("num_feature_levels", 2, "num_feature_levels"),
        ("anchor_image_size", [640], "anchor_image_size"),
        ("decoder_activation_function", "swish!", "decoder_activation_function"),
        ("d_model", 30, "d_model"),
        ("label_noise_ratio", 2.0, "label_noise_ratio"),
        ("not_a_field", 1, "not_a_field"),
    ],
)
def test_bad_config_values_are_refused_by_name(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RTDetrConfig(**{**copy.deepcopy(FIELDS), field: value})


def test_a_file_path_is_refused_by_name(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights.pth"):
        RTDetrForObjectDetection.from_pretrained(path)


@pytest.mark.parametrize(
    "factory, name",
    [(rtdetr_r18vd, "rtdetr_r18vd"), (rtdetr_r34vd, "rtdetr_r34vd"), (rtdetr_r50vd, "rtdetr_r50vd"), (rtdetr_r101vd, "rtdetr_r101vd")],
)
def test_factories_build_the_published_sizes(factory, name):
    """Parameter counts against ``transformers``' model of the same config (the published
    checkpoints' configs: R18 ~20M, R34 ~31M, R50 ~42M, R101 ~76M parameters with 80 classes)."""
    ours = factory(num_labels=80)
    theirs = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(**{**ours.config.to_dict(), "model_type": "rt_detr"}))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    expected = {"rtdetr_r18vd": 20e6, "rtdetr_r34vd": 31e6, "rtdetr_r50vd": 42e6, "rtdetr_r101vd": 76e6}[name]
    assert abs(count - expected) / expected < 0.05, count
