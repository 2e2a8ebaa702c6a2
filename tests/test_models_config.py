"""DeformableDetrConfig: Hugging Face names and defaults, JSON round trips, validation."""

import inspect
import json

import pytest

from models import DeformableDetrConfig

transformers = pytest.importorskip("transformers")


def test_every_transformers_argument_has_the_same_default():
    theirs = inspect.signature(transformers.DeformableDetrConfig.__init__).parameters
    ours = inspect.signature(DeformableDetrConfig.__init__).parameters
    for name, parameter in theirs.items():
        if name in ("self", "kwargs"):
            continue
        assert name in ours, f"missing argument {name}"
        assert ours[name].default == parameter.default, name
    reference = transformers.DeformableDetrConfig()
    config = DeformableDetrConfig()
    assert config.num_labels == reference.num_labels == 2
    assert config.backbone_kwargs == reference.backbone_kwargs
    assert config.hidden_size == reference.hidden_size and config.num_attention_heads == reference.num_attention_heads


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"dilation": True, "num_feature_levels": 1},
        {"with_box_refine": True, "two_stage": True, "d_model": 128, "num_labels": 5},
        {"position_embedding_type": "learned", "activation_function": "gelu", "backbone": "resnet18"},
    ],
)
def test_json_round_trip_both_ways_with_transformers(tmp_path, overrides):
    theirs = transformers.DeformableDetrConfig(use_pretrained_backbone=False, **overrides)
    theirs.save_pretrained(tmp_path / "hf")
    ours = DeformableDetrConfig.from_pretrained(tmp_path / "hf")
    reference = theirs.to_dict()
    for key, value in ours.to_dict().items():
        if key in reference and key not in ("id2label", "label2id"):
            assert value == reference[key], key
    assert ours.id2label == {int(k): v for k, v in theirs.id2label.items()}
    assert ours.num_labels == theirs.num_labels

    ours.save_pretrained(tmp_path / "ours")
    again = transformers.DeformableDetrConfig.from_pretrained(tmp_path / "ours")
    for key in inspect.signature(transformers.DeformableDetrConfig.__init__).parameters:
        if key not in ("self", "kwargs") and hasattr(theirs, key):
            assert getattr(again, key) == getattr(theirs, key), key
    assert again.num_labels == theirs.num_labels

    assert DeformableDetrConfig.from_dict(ours.to_dict()) == ours
    ours.to_json_file(tmp_path / "c.json")
    assert DeformableDetrConfig.from_json_file(tmp_path / "c.json") == ours
    json.loads((tmp_path / "c.json").read_text())


def test_labels_and_unknown_keys_are_kept():
    config = DeformableDetrConfig(id2label={"0": "cat", "1": "dog", "2": "bird"}, architectures=["X"], transformers_version="4.57.6")
    assert config.num_labels == 3 and config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    data = config.to_dict()
    assert data["architectures"] == ["X"] and data["id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    config.num_labels = 5
    assert config.id2label[4] == "LABEL_4"
    assert config.copy(num_labels=7).num_labels == 7
    assert config.copy(num_feature_levels=1).backbone_kwargs["out_indices"] == [4]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"two_stage": True}, "with_box_refine"),
        ({"d_model": 100}, "d_model"),
        ({"d_model": 256, "encoder_attention_heads": 7}, "encoder_attention_heads"),
        ({"activation_function": "nope"}, "activation_function"),
        ({"position_embedding_type": "cosine"}, "position_embedding_type"),
        ({"num_feature_levels": 0}, "num_feature_levels"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_labels": 0}, "num_labels"),
        ({"backbone_kwargs": {"out_indices": [1, 2, 3, 4]}, "num_feature_levels": 3}, "num_feature_levels"),
        ({"backbone": None}, "backbone"),
        ({"id2label": {0: "a"}, "num_labels": 3}, "num_labels"),
    ],
)
def test_invalid_configs_fail_naming_the_argument(overrides, message):
    with pytest.raises(ValueError, match=message):
        DeformableDetrConfig(**overrides)


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DeformableDetrConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(ValueError, match="model_type"):
        DeformableDetrConfig.from_pretrained(tmp_path)
