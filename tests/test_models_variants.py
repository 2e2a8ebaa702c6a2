"""Variants, backbone, outputs, freezing and padding behaviour of our models (no transformers needed)."""

import pytest
import torch
from torch import nn

import models
from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.backbones import build_backbone_body

SMALL = dict(
    backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, two_stage_num_proposals=10, num_labels=3, dropout=0.0,
)


@pytest.mark.parametrize(
    "factory, levels, strides, refine, two_stage",
    [
        ("deformable_detr", 4, [8, 16, 32], False, False),
        ("deformable_detr_single_scale", 1, [32], False, False),
        ("deformable_detr_single_scale_dc5", 1, [16], False, False),
        ("deformable_detr_box_refine", 4, [8, 16, 32], True, False),
        ("deformable_detr_two_stage", 4, [8, 16, 32], True, True),
    ],
)
def test_factories_build_the_variant_and_run(factory, levels, strides, refine, two_stage):
    overrides = dict(SMALL, backbone="resnet50") if factory.endswith("dc5") else SMALL
    model = getattr(models, factory)(**overrides).eval()
    config = model.config
    assert (config.num_feature_levels, config.with_box_refine, config.two_stage) == (levels, refine, two_stage)
    assert model.model.backbone.conv_encoder.model.strides == strides
    assert len(model.model.input_proj) == levels
    # shared heads without refinement, one per layer with it (+1 for two-stage proposals)
    assert len(model.class_embed) == config.decoder_layers + two_stage
    assert (model.class_embed[0] is model.class_embed[1]) != refine
    assert (model.model.decoder.bbox_embed is model.bbox_embed) == refine
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 10, 3) and out.pred_boxes.shape == (1, 10, 4)
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    assert out.intermediate_hidden_states.shape == (1, 2, 10, 64)
    assert out.init_reference_points.shape == (1, 10, 4 if two_stage else 2)
    assert (out.enc_outputs_class is not None) == two_stage
    # attribute, key and tuple access agree
    assert out["logits"] is out.logits and out.to_tuple()[0] is out.logits and "loss" not in out


def test_outputs_support_hidden_states_and_attentions():
    model = models.deformable_detr(**SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert len(out.encoder_hidden_states) == SMALL["encoder_layers"] + 1
    assert len(out.decoder_hidden_states) == SMALL["decoder_layers"] + 1
    torch.testing.assert_close(out.decoder_hidden_states[-1], out.last_hidden_state)
    with torch.no_grad():  # attention weights are returned since issue 16 (tests/test_hf_flows.py checks them)
        attended = model(torch.randn(1, 3, 64, 64), output_attentions=True)
    assert len(attended.encoder_attentions) == SMALL["encoder_layers"] and len(attended.cross_attentions) == SMALL["decoder_layers"]
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="pixel_mask"):
        model(torch.randn(1, 3, 64, 64), torch.ones(1, 32, 32))


def test_freeze_and_unfreeze_backbone():
    model = models.deformable_detr(**SMALL)
    body = model.model.backbone.conv_encoder.model
    trainable = {name for name, p in body.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("layer2", "layer3", "layer4")) for name in trainable)  # paper: stem + layer1 frozen
    model.freeze_backbone()
    assert not any(p.requires_grad for p in body.parameters())
    assert all(p.requires_grad for p in model.model.encoder.parameters())
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in body.parameters())


@pytest.mark.parametrize("name, dilation", [("resnet18", False), ("resnet50", False), ("resnet50", True), ("resnet18", True)])
def test_backbone_matches_timm_with_the_same_weights(name, dilation):
    timm = pytest.importorskip("timm")
    config = DeformableDetrConfig(backbone=name, dilation=dilation, use_pretrained_backbone=False)
    body = build_backbone_body(config).eval()
    reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=(2, 3, 4), **({"output_stride": 16} if dilation else {})).eval()
    with torch.no_grad():
        for module in reference.modules():  # non-trivial BatchNorm statistics
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    body.load_state_dict(reference.state_dict(), strict=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(body(pixels), reference(pixels)):
            scale = theirs.abs().max().item()  # activations grow through 50 random layers
            torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=1e-4)


def test_pretrained_backbone_outside_the_cache_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="use_pretrained_backbone=False"):
        build_backbone_body(DeformableDetrConfig(backbone="resnet18"))
    with pytest.raises(NotImplementedError, match="backbone_config"):
        build_backbone_body(DeformableDetrConfig(use_timm_backbone=False, backbone=None, backbone_config={"model_type": "convnext"}))
    with pytest.raises(NotImplementedError, match="hidden_sizes"):
        build_backbone_body(DeformableDetrConfig(use_timm_backbone=False, backbone_config={"hidden_sizes": [32, 64, 128, 256]}, use_pretrained_backbone=False, backbone=None))


def test_pretrained_backbone_loads_from_the_local_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.resnet18(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(weights, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    body = build_backbone_body(DeformableDetrConfig(backbone="resnet18"))
    torch.testing.assert_close(body.layer3[0].conv1.weight, weights["layer3.0.conv1.weight"])


class _Patchify(nn.Module):
    """A backbone whose features at a position depend only on the pixels under it."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, c, s, s) for c, s in ((128, 8), (256, 16), (512, 32)))
        self.channels = [128, 256, 512]

    def forward(self, pixels):
        return [conv(pixels) for conv in self.convs]


@pytest.mark.parametrize("variant", [{}, {"with_box_refine": True}, {"with_box_refine": True, "two_stage": True}])
def test_padded_batch_gives_each_image_its_own_outputs(variant):
    """The transformer ignores padding exactly. (The ResNet's borders and the input projections'
    GroupNorm do see padding, in the paper's code and in transformers alike, so the full model is
    checked with a padding-independent backbone and no GroupNorm.)"""
    torch.manual_seed(0)
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL, **variant, num_feature_levels=3, use_pretrained_backbone=False)).eval()
    model.model.backbone.conv_encoder.model = _Patchify()
    for projection in model.model.input_proj:
        projection[1] = nn.Identity()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    first, second = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 96, 64)
    batch = torch.zeros(2, 3, 96, 96)
    mask = torch.zeros(2, 96, 96, dtype=torch.long)
    batch[0, :, :64, :96], mask[0, :64, :96] = first[0], 1
    batch[1, :, :96, :64], mask[1, :96, :64] = second[0], 1
    with torch.no_grad():
        together = model(batch, mask)
        alone = [model(first), model(second)]
    for index in range(2):
        torch.testing.assert_close(together.logits[index], alone[index].logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(together.pred_boxes[index], alone[index].pred_boxes[0], atol=1e-4, rtol=1e-4)


def test_disable_custom_kernels_uses_the_reference_attention():
    model = models.deformable_detr(**SMALL, disable_custom_kernels=True)
    attentions = [m for m in model.modules() if m.__class__.__name__ == "MultiScaleDeformableAttention"]
    assert attentions and all(m.use_reference for m in attentions)
    fast = models.deformable_detr(**SMALL)
    fast.load_state_dict(model.state_dict())
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(pixels).logits, model.eval()(pixels).logits, atol=1e-4, rtol=1e-4)


def test_training_step_reaches_every_trainable_parameter():
    model = models.deformable_detr_two_stage(**SMALL, auxiliary_loss=True)
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    out = model(torch.randn(1, 3, 64, 64), labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert len(out.auxiliary_outputs) == SMALL["decoder_layers"] - 1
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # the last layer's refinement head only refines points nobody uses afterwards (as in the paper)
    assert all(n.startswith(f"bbox_embed.{SMALL['decoder_layers'] - 1}.") or "decoder.bbox_embed" in n for n in unused), unused


def test_inference_backbone_folds_batch_norm_and_follows_weight_changes():
    model = models.deformable_detr(**dict(SMALL, backbone="resnet50")).eval()
    body = model.model.backbone.conv_encoder.model
    with torch.no_grad():
        for module in body.modules():
            if hasattr(module, "running_var"):
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.2, 0.2)
    pixels = torch.randn(1, 3, 64, 96)
    plain = body(pixels)  # autograd on: the modules as they are
    with torch.no_grad():
        folded = body(pixels)
    assert not any(isinstance(m, nn.Identity) for m in body.modules()), "the model itself is untouched"
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b.detach(), atol=1e-5 * b.abs().max().item(), rtol=1e-4)
    assert "_inference_copy" not in "".join(model.state_dict())
    with torch.no_grad():
        body.layer4[0].conv1.weight.mul_(2.0)  # an in-place change must rebuild the folded copy
        refolded = body(pixels)[-1]
    torch.testing.assert_close(refolded, body(pixels)[-1].detach(), atol=1e-5 * refolded.abs().max().item(), rtol=1e-4)


def test_bare_model_returns_decoder_states_without_heads():
    from models import DeformableDetrModel

    model = DeformableDetrModel(DeformableDetrConfig(**SMALL, use_pretrained_backbone=False)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.last_hidden_state.shape == (2, 10, 64)
    assert out.encoder_last_hidden_state.shape[0] == 2 and out.enc_outputs_class is None
    with pytest.raises(TypeError, match="config"):
        DeformableDetrModel({"d_model": 64})


def test_bare_two_stage_model_loads_a_detection_checkpoint(tmp_path):
    """The bare model builds its own proposal heads, so it loads a two-stage detector's checkpoint
    (as ``transformers`` does) and gives the detector's decoder states."""
    from models import DeformableDetrModel

    detector = models.deformable_detr_two_stage(**SMALL).eval()
    detector.save_pretrained(tmp_path)
    bare, report = DeformableDetrModel.from_pretrained(tmp_path, output_loading_info=True)
    assert report.clean, report.describe()  # every head is one the decoder uses
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        theirs, ours = detector(pixels), bare(pixels)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state)
    torch.testing.assert_close(ours.enc_outputs_class, theirs.enc_outputs_class)


def test_one_variant_table_feeds_factories_cli_and_original_args():
    from models.cli.parser import build_parser
    from models.ddetr.checkpoints import config_from_original_args
    from models.ddetr.variant_table import VARIANT_SWITCHES, VARIANTS
    from models.registry import variant_names

    assert sorted(variant_names()["deformable-detr"]) == sorted(VARIANTS)
    variant_help = next(a for a in build_parser().commands["train"]._actions if a.dest == "variant").help
    assert all(name in variant_help for name in VARIANTS)
    for variant in VARIANTS.values():
        assert set(variant.fields) <= set(VARIANT_SWITCHES), variant.name
        model_config = getattr(models, variant.factory)(**SMALL).config
        original = config_from_original_args({"backbone": "resnet18", **{k: getattr(model_config, k) for k in VARIANT_SWITCHES}}, num_labels=3)
        assert {k: getattr(original, k) for k in VARIANT_SWITCHES} == {k: getattr(model_config, k) for k in VARIANT_SWITCHES}
