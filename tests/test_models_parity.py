"""Parity with transformers 4.57.6 (random weights): outputs, losses, checkpoints both ways."""

import warnings

import pytest
import torch

from models import DeformableDetrForObjectDetection

transformers = pytest.importorskip("transformers")

SMALL = dict(
    backbone="resnet18",
    use_pretrained_backbone=False,
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_queries=12,
    two_stage_num_proposals=12,
    num_labels=3,
    dropout=0.0,
    auxiliary_loss=True,
)
VARIANTS = {
    "plain": {},
    "box_refine": {"with_box_refine": True},
    "two_stage": {"with_box_refine": True, "two_stage": True},
    "single_scale_dc5_learned_gelu": {
        "backbone": "resnet50",
        "num_feature_levels": 1,
        "dilation": True,
        "position_embedding_type": "learned",
        "activation_function": "gelu",
    },
}
LABELS = [
    {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.3, 0.2]])},
    {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.4, 0.4]])},
]


def hf_model(variant):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**{**SMALL, **VARIANTS[variant]}))
    with torch.no_grad():  # transformers zero-initialises some heads: make every weight matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def inputs():
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 96)
    pixel_mask = torch.ones(2, 64, 96, dtype=torch.long)
    pixel_mask[1, 48:] = 0
    pixel_mask[1, :, 70:] = 0
    return pixel_values, pixel_mask


FIELDS = ("logits", "pred_boxes", "init_reference_points", "intermediate_hidden_states", "intermediate_reference_points",
          "last_hidden_state", "encoder_last_hidden_state", "enc_outputs_class", "enc_outputs_coord_logits")


def assert_outputs_close(theirs, ours):
    for name in FIELDS:
        expected, actual = getattr(theirs, name), getattr(ours, name)
        if expected is None:
            assert actual is None, name
            continue
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(actual)), name
        torch.testing.assert_close(actual[finite], expected[finite], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_checkpoint_loads_and_matches(tmp_path, variant):
    reference = hf_model(variant)
    # transformers 4.57.6 cannot write refined heads (shared tensors) as safetensors
    reference.save_pretrained(tmp_path, safe_serialization=variant in ("plain", "single_scale_dc5_learned_gelu"))
    model, report = DeformableDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert report.clean, report.describe()
    pixel_values, pixel_mask = inputs()
    with torch.no_grad():
        theirs = reference(pixel_values=pixel_values, pixel_mask=pixel_mask, output_hidden_states=True)
        ours = model(pixel_values, pixel_mask, output_hidden_states=True)
    assert_outputs_close(theirs, ours)
    for name in ("encoder_hidden_states", "decoder_hidden_states"):
        assert len(getattr(theirs, name)) == len(getattr(ours, name))
        torch.testing.assert_close(getattr(ours, name)[-1], getattr(theirs, name)[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["plain", "box_refine", "two_stage"])
def test_losses_match_transformers(tmp_path, variant):
    reference = hf_model(variant)
    reference.save_pretrained(tmp_path, safe_serialization=False)
    model = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    pixel_values, pixel_mask = inputs()
    theirs = reference(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=LABELS)
    ours = model(pixel_values, pixel_mask, labels=LABELS)
    common = set(theirs.loss_dict) & set(ours.loss_dict)
    assert {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= common
    assert set(theirs.loss_dict) <= set(ours.loss_dict)
    for name in sorted(common):
        torch.testing.assert_close(ours.loss_dict[name], theirs.loss_dict[name], atol=1e-4, rtol=1e-4, msg=name)
    if variant == "two_stage":  # we add the paper's encoder-proposal terms, transformers does not
        assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(ours.loss_dict)
        extra = sum(ours.loss_dict[f"{k}_enc"] * w for k, w in (("loss_ce", 1), ("loss_bbox", 5), ("loss_giou", 2)))
        torch.testing.assert_close(ours.loss - extra, theirs.loss, atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-4, rtol=1e-4)
    assert len(ours.auxiliary_outputs) == len(theirs.auxiliary_outputs) == SMALL["decoder_layers"] - 1
    ours.loss.backward()
    assert model.model.level_embed.grad is not None


@pytest.mark.parametrize("variant, safe_serialization", [("plain", True), ("box_refine", True), ("two_stage", False)])
def test_transformers_loads_what_we_save(tmp_path, variant, safe_serialization):
    reference = hf_model(variant)
    reference.save_pretrained(tmp_path / "hf", safe_serialization=False)
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe_serialization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, info = transformers.DeformableDetrForObjectDetection.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    # transformers lists the decoder's alias of the shared heads as missing; they are the same tensors
    assert all(key.startswith(("model.decoder.bbox_embed.", "model.decoder.class_embed.")) for key in info["missing_keys"]), info
    pixel_values, pixel_mask = inputs()
    with torch.no_grad():
        assert_outputs_close(reference(pixel_values=pixel_values, pixel_mask=pixel_mask), again.eval()(pixel_values=pixel_values, pixel_mask=pixel_mask))


@pytest.mark.parametrize(
    "backbone_config",
    [
        {"layer_type": "basic", "hidden_sizes": [64, 128, 256, 512], "depths": [1, 1, 1, 1], "out_features": ["stage2", "stage3", "stage4"]},
        {"depths": [1, 1, 1, 1], "out_features": ["stage4"]},
    ],
    ids=["basic_3_levels", "bottleneck_last_stage"],
)
def test_transformers_own_resnet_backbone_both_ways(tmp_path, backbone_config):
    """``use_timm_backbone=False``: transformers' ResNet names are renamed to torchvision's and back."""
    settings = {**SMALL, "backbone": None, "use_timm_backbone": False, "backbone_config": transformers.ResNetConfig(**backbone_config)}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**settings)).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    reference.save_pretrained(tmp_path / "hf")
    model, report = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert report.clean, report.describe()
    assert "layer4.0.conv1.weight" in dict(model.model.backbone.conv_encoder.model.named_parameters())
    pixel_values, pixel_mask = inputs()
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, pixel_mask=pixel_mask)
        assert_outputs_close(expected, model(pixel_values, pixel_mask))
    model.save_pretrained(tmp_path / "ours")
    again, info = transformers.DeformableDetrForObjectDetection.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert_outputs_close(expected, again.eval()(pixel_values=pixel_values, pixel_mask=pixel_mask))
