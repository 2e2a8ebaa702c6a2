"""``msda.integrations.hf``: transformers models give the same outputs with and without our op.

Every model is a ``transformers==4.57.6`` model built from a tiny config with random weights (no
download). The deformable attention parameters are re-drawn so sampling points spread over the
maps (and past their borders) instead of sitting on the paper's initial ring.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings

import pytest
import torch
import transformers as tf
from torch import nn

from msda.integrations import hf

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# tiny models, one per family
# ------------------------------------------------------------------------------------------------


def _resnet() -> tf.ResNetConfig:
    return tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"])


def _bert() -> tf.BertConfig:
    return tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)


def _swin() -> tf.SwinConfig:
    return tf.SwinConfig(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"]
    )


def _rt_detr_backbone() -> tf.RTDetrResNetConfig:
    return tf.RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"], layer_type="basic"
    )


def _pixel_mask(height: int, width: int) -> torch.Tensor:
    """Batch of 2: the first image fills the canvas, the second is padded right and below."""
    mask = torch.ones(2, height, width, dtype=torch.long)
    mask[1, :, width * 3 // 4 :] = 0
    mask[1, height * 3 // 4 :] = 0
    return mask


_SMALL_DETR = dict(
    d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10
)
_SMALL_RT_DETR = dict(
    d_model=32,
    encoder_hidden_dim=32,
    encoder_in_channels=[16, 16, 16],
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    decoder_layers=2,
    num_queries=10,
    num_feature_levels=3,
    decoder_in_channels=[32, 32, 32],
)


def deformable_detr():
    config = tf.DeformableDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, backbone_config=_resnet(), num_feature_levels=4, two_stage=True, with_box_refine=True, two_stage_num_proposals=10, **_SMALL_DETR
    )
    return tf.DeformableDetrForObjectDetection(config), dict(pixel_values=torch.randn(2, 3, 64, 80), pixel_mask=_pixel_mask(64, 80))


def grounding_dino():
    config = tf.GroundingDinoConfig(backbone_config=_resnet(), text_config=_bert(), num_feature_levels=4, max_text_len=16, **_SMALL_DETR)
    inputs = dict(pixel_values=torch.randn(2, 3, 64, 80), input_ids=torch.randint(1, 50, (2, 7)), pixel_mask=_pixel_mask(64, 80))
    return tf.GroundingDinoForObjectDetection(config), inputs


def mm_grounding_dino():
    config = tf.MMGroundingDinoConfig(backbone_config=_resnet(), text_config=_bert(), num_feature_levels=4, max_text_len=16, **_SMALL_DETR)
    inputs = dict(pixel_values=torch.randn(2, 3, 64, 80), input_ids=torch.randint(1, 50, (2, 7)), pixel_mask=_pixel_mask(64, 80))
    return tf.MMGroundingDinoForObjectDetection(config), inputs


def deta(disable_custom_kernels: bool = True):
    from transformers.models.deprecated.deta import DetaConfig, DetaForObjectDetection

    config = DetaConfig(
        backbone_config=_resnet(), num_feature_levels=4, two_stage=False, with_box_refine=True, disable_custom_kernels=disable_custom_kernels, **_SMALL_DETR
    )
    return DetaForObjectDetection(config), dict(pixel_values=torch.randn(2, 3, 64, 80), pixel_mask=_pixel_mask(64, 80))


def rt_detr():
    config = tf.RTDetrConfig(backbone_config=_rt_detr_backbone(), **_SMALL_RT_DETR)
    return tf.RTDetrForObjectDetection(config), dict(pixel_values=torch.randn(2, 3, 64, 64))


def rt_detr_v2(method: str = "default"):
    config = tf.RTDetrV2Config(backbone_config=_rt_detr_backbone(), decoder_n_levels=3, decoder_method=method, **_SMALL_RT_DETR)
    return tf.RTDetrV2ForObjectDetection(config), dict(pixel_values=torch.randn(2, 3, 64, 64))


def d_fine(points=(3, 4, 2)):
    backbone = tf.HGNetV2Config(
        stem_channels=[3, 8, 8],
        stage_in_channels=[8, 16, 16, 16],
        stage_mid_channels=[8, 8, 8, 8],
        stage_out_channels=[16, 16, 16, 16],
        stage_num_blocks=[1, 1, 1, 1],
        stage_downsample=[False, True, True, True],
        stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 5, 5],
        stage_numb_of_layers=[1, 1, 1, 1],
        hidden_sizes=[16, 16, 16, 16],
        out_features=["stage2", "stage3", "stage4"],
    )
    config = tf.DFineConfig(backbone_config=backbone, decoder_n_points=list(points) if isinstance(points, tuple) else points, hidden_expansion=0.5, **_SMALL_RT_DETR)
    return tf.DFineForObjectDetection(config), dict(pixel_values=torch.randn(2, 3, 64, 64))


def mask2former():
    config = tf.Mask2FormerConfig(
        backbone_config=_swin(),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=2,
        decoder_layers=2,
        num_queries=10,
        num_attention_heads=2,
        common_stride=4,
    )
    return tf.Mask2FormerForUniversalSegmentation(config), dict(pixel_values=torch.randn(2, 3, 64, 64), pixel_mask=_pixel_mask(64, 64))


def oneformer():
    config = tf.OneFormerConfig(
        backbone_config=_swin(),
        hidden_dim=32,
        conv_dim=32,
        mask_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=2,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=10,
        text_encoder_width=32,
        text_encoder_context_length=8,
        text_encoder_num_layers=1,
        text_encoder_vocab_size=50,
        text_encoder_proj_layers=1,
        text_encoder_n_ctx=2,
        task_seq_len=8,
        max_seq_len=8,
        common_stride=4,
    )
    inputs = dict(pixel_values=torch.randn(2, 3, 64, 64), task_inputs=torch.randint(0, 50, (2, 8)), pixel_mask=_pixel_mask(64, 64))
    return tf.OneFormerModel(config), inputs


def omdet_turbo():
    text = tf.CLIPTextConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16, projection_dim=16)
    config = tf.OmDetTurboConfig(
        use_timm_backbone=True,  # timm Swin-T without pretrained weights: built locally
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs={"out_indices": [1, 2, 3], "img_size": 64, "always_partition": True},
        encoder_in_channels=[192, 384, 768],
        text_config=text,
        text_projection_in_dim=16,
        text_projection_out_dim=16,
        task_encoder_hidden_dim=32,
        class_embed_dim=16,  # 4.57.6 needs class_embed_dim != decoder_hidden_dim
        num_queries=10,
        vision_features_channels=[32, 32, 32],
        encoder_hidden_dim=32,
        encoder_attention_heads=2,
        encoder_dim_feedforward=32,
        decoder_hidden_dim=32,
        decoder_num_heads=2,
        decoder_num_layers=2,
        decoder_dim_feedforward=32,
        image_size=64,
    )
    inputs = dict(
        pixel_values=torch.randn(2, 3, 64, 64),
        classes_input_ids=torch.randint(1, 50, (6, 5)),
        classes_attention_mask=torch.ones(6, 5, dtype=torch.long),
        tasks_input_ids=torch.randint(1, 50, (2, 5)),
        tasks_attention_mask=torch.ones(2, 5, dtype=torch.long),
        classes_structure=torch.tensor([3, 3]),
    )
    return tf.OmDetTurboForObjectDetection(config), inputs


FAMILIES = {
    "deformable_detr": deformable_detr,
    "grounding_dino": grounding_dino,
    "mm_grounding_dino": mm_grounding_dino,
    "deta": deta,
    "rt_detr": rt_detr,
    "rt_detr_v2": rt_detr_v2,
    "d_fine": d_fine,
    "mask2former": mask2former,
    "oneformer": oneformer,
    "omdet_turbo": omdet_turbo,
}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    """transformers' deformable attention layers: they own the sampling_offsets projection."""
    return [module for module in model.modules() if isinstance(getattr(module, "sampling_offsets", None), nn.Linear)]


def _spread_sampling(model: nn.Module, seed: int = 0) -> None:
    """Re-draw the attention parameters: query-dependent offsets of a few pixels / box halves
    in every direction (some past the borders), non-uniform attention, non-trivial projections."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in _attention_layers(model):
            offsets = layer.sampling_offsets
            offsets.weight.copy_(torch.randn(offsets.weight.shape, generator=generator) * 0.05)
            offsets.bias.copy_(torch.rand(offsets.bias.shape, generator=generator) * 6 - 3)
            weights = layer.attention_weights
            weights.weight.copy_(torch.randn(weights.weight.shape, generator=generator) * 0.2)
            weights.bias.copy_(torch.randn(weights.bias.shape, generator=generator))
            for name in ("value_proj", "output_proj"):
                projection = getattr(layer, name, None)
                if isinstance(projection, nn.Linear):
                    projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) / projection.in_features**0.5)


def _build(family: str, **kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs = FAMILIES[family](**kwargs)
    _spread_sampling(model)
    return model.eval(), inputs


def _floating_outputs(outputs) -> dict[str, torch.Tensor]:
    return {key: value for key, value in outputs.items() if isinstance(value, torch.Tensor) and value.is_floating_point()}


def _run(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return _floating_outputs(model(**inputs))


@pytest.fixture
def op_calls(monkeypatch):
    """Records every call of msda's op made through the integration."""
    calls = []
    original = hf.ms_deform_attn

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr(hf, "ms_deform_attn", counting)
    return calls


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_enable_keeps_outputs_and_disable_restores(family, op_calls):
    model, inputs = _build(family)
    layers = _attention_layers(model)
    assert layers, f"{family}: no deformable attention layer found by the test itself"
    state_before = {key: value.clone() for key, value in model.state_dict().items()}
    expected = _run(model, inputs)

    assert hf.enable(model) is model
    swapped = hf.swapped_modules(model)
    assert len(swapped) == len(layers)
    got = _run(model, inputs)
    # every attention layer ran once through our op, and nothing else changed
    assert len(op_calls) == len(layers)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE, msg=lambda m: f"{family}.{key}: {m}")
    assert model.state_dict().keys() == state_before.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state_before.items())

    assert hf.disable(model) is model
    assert hf.swapped_modules(model) == []
    calls_while_enabled = len(op_calls)
    again = _run(model, inputs)
    assert len(op_calls) == calls_while_enabled
    for key in expected:
        assert torch.equal(again[key], expected[key]), f"{family}.{key} differs after disable()"


def test_disable_puts_back_the_same_objects():
    model, _ = _build("deformable_detr")
    kernels = {name: module for name, module in model.named_modules() if type(module).__name__ == "MultiScaleDeformableAttention"}
    hf.enable(model)
    hf.enable(model)  # twice is harmless
    assert len(hf.swapped_modules(model)) == len(kernels)
    assert all(isinstance(module, hf.MsdaKernel) for name, module in model.named_modules() if name in kernels)
    hf.disable(model)
    assert {name: module for name, module in model.named_modules() if name in kernels} == kernels


@pytest.mark.parametrize("family", ["mask2former", "rt_detr_v2", "d_fine"])
def test_disable_removes_instance_overrides(family):
    model, _ = _build(family)
    before = {id(module): dict(vars(module)) for module in model.modules()}
    hf.enable(model)
    hf.disable(model)
    for module in model.modules():
        assert "forward" not in vars(module)
        assert vars(module).keys() == before[id(module)].keys()
        for key, value in before[id(module)].items():
            assert vars(module)[key] is value, f"{type(module).__name__}.{key} was not restored"


def test_enable_only_touches_the_given_model():
    enabled, inputs = _build("mask2former")
    untouched, _ = _build("mask2former")
    hf.enable(enabled)
    assert hf.swapped_modules(untouched) == []
    assert not any("forward" in vars(module) for module in untouched.modules())
    hf.disable(enabled)


def test_d_fine_uniform_points(op_calls):
    model, inputs = _build("d_fine", points=4)
    expected = _run(model, inputs)
    got = _run(hf.enable(model), inputs)
    assert op_calls
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE)


def test_deta_autograd_function_path(op_calls):
    """With custom kernels allowed, DETA calls MultiScaleDeformableAttentionFunction.apply first
    (on CPU transformers' version fails and falls back to grid_sample); ours must serve it."""
    model, inputs = _build("deta", disable_custom_kernels=False)
    expected = _run(model, inputs)
    got = _run(hf.enable(model), inputs)
    assert len(op_calls) == len(_attention_layers(model))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE)


def test_rt_detr_v2_discrete_method_passes_through(op_calls):
    """The "discrete" sampling rounds to pixels; the op interpolates, so it stays transformers'."""
    model, inputs = _build("rt_detr_v2", method="discrete")
    expected = _run(model, inputs)
    got = _run(hf.enable(model), inputs)
    assert op_calls == []
    for key in expected:
        assert torch.equal(got[key], expected[key])


def test_gradients_match_deformable_detr():
    model, inputs = _build("deformable_detr")
    model.train()

    def gradients():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in both runs
        outputs = model(**inputs)
        (outputs.logits.square().mean() + outputs.pred_boxes.sum()).backward()
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}

    expected = gradients()
    hf.enable(model)
    got = gradients()
    hf.disable(model)
    assert got.keys() == expected.keys()
    offsets = [name for name in expected if "sampling_offsets" in name]
    assert offsets and any(expected[name].abs().sum() > 0 for name in offsets)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_deepcopy_of_enabled_model_stays_enabled(op_calls):
    model, inputs = _build("rt_detr_v2")
    hf.enable(model)
    clone = copy.deepcopy(model)
    assert hf.swapped_modules(clone) == hf.swapped_modules(model)
    expected = _run(model, inputs)
    calls = len(op_calls)
    got = _run(clone, inputs)
    assert len(op_calls) == 2 * calls
    for key in expected:
        assert torch.equal(got[key], expected[key])
    hf.disable(clone)
    assert hf.swapped_modules(clone) == [] and hf.swapped_modules(model) != []


@pytest.mark.parametrize("family", ["deformable_detr", "mask2former", "d_fine"])
def test_pickled_enabled_model_stays_enabled(family, op_calls):
    """One family per swap route: kernel child, instance forward, instance attribute."""
    model, inputs = _build(family)
    hf.enable(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert hf.swapped_modules(loaded) == hf.swapped_modules(model) != []
    expected = _run(model, inputs)
    calls = len(op_calls)
    got = _run(loaded, inputs)
    assert len(op_calls) == 2 * calls
    for key in expected:
        assert torch.equal(got[key], expected[key])
    hf.disable(loaded)
    assert hf.swapped_modules(loaded) == []


def test_enable_rejects_non_modules():
    with pytest.raises(TypeError, match="model"):
        hf.enable("not a model")
    with pytest.raises(TypeError, match="model"):
        hf.disable(None)


def test_enable_warns_when_nothing_to_swap():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="found no multi-scale deformable attention"):
        assert hf.enable(model) is model
    assert hf.swapped_modules(model) == []


def test_integrations_do_not_import_transformers():
    code = "import sys, msda.integrations, msda.integrations.hf, msda.integrations.mmcv; assert 'transformers' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
