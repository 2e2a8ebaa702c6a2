"""RT-DETR's encoder blocks against ``transformers`` 4.57.6 with the same weights: the 2-D sin-cos
table, the AIFI layer, the RepVGG block (and its fused form), the CSP layer, and the whole hybrid
encoder (AIFI + CCFM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RTDetrConfig
from transformers.models.rt_detr import modeling_rt_detr as hf

from detr_blocks import (
    AIFI,
    CCFM,
    AIFILayer,
    CSPRepLayer,
    HybridEncoder,
    RepVggBlock,
    fuse_repvgg_blocks,
    sincos_2d_position_embedding,
)


def _config(**overrides) -> RTDetrConfig:
    fields = dict(encoder_hidden_dim=16, encoder_ffn_dim=24, encoder_attention_heads=2, encoder_in_channels=[16, 16, 16],
                  feat_strides=[8, 16, 32], encode_proj_layers=[2], encoder_layers=1, hidden_expansion=1.0)
    return RTDetrConfig(**{**fields, **overrides})


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, batch-norm statistics included (defaults would hide a mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
    return module.eval()


@pytest.mark.parametrize(("width", "height", "dim", "temperature"), [(3, 5, 8, 10000.0), (4, 4, 16, 20.0), (7, 2, 32, 10000)])
def test_sincos_table_matches_transformers(width, height, dim, temperature):
    theirs = hf.RTDetrHybridEncoder.build_2d_sincos_position_embedding(width, height, dim, temperature)[0]
    torch.testing.assert_close(sincos_2d_position_embedding(width, height, dim, temperature), theirs)
    double = sincos_2d_position_embedding(width, height, dim, temperature, dtype=torch.float64)
    assert double.dtype == torch.float64 and double.shape == (width * height, dim)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width": 0, "height": 2, "dim": 8}, "width"), ({"width": 2, "height": 2.0, "dim": 8}, "height"),
    ({"width": 2, "height": 2, "dim": 6}, "dim"), ({"width": 2, "height": 2, "dim": 8, "temperature": 0}, "temperature"),
    ({"width": 2, "height": 2, "dim": 8, "dtype": torch.int32}, "dtype"),
])
def test_sincos_table_names_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sincos_2d_position_embedding(**kwargs)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_aifi_layer_matches_transformers_encoder_layer(activation):
    config = _config(encoder_activation_function=activation)
    theirs = _randomize(hf.RTDetrEncoderLayer(config), 1)
    ours = AIFILayer(16, 24, num_heads=2, activation=activation).eval()
    ours.load_state_dict(theirs.state_dict())
    hidden = torch.randn(2, 12, 16)
    position = sincos_2d_position_embedding(3, 4, 16)
    torch.testing.assert_close(ours(hidden, position), theirs(hidden, None, position[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_aifi_runs_on_a_map_like_transformers_encoder(num_layers):
    """One layer: ``RTDetrEncoder`` itself. Two: its layers chained by hand, since
    ``RTDetrEncoder`` with ``encoder_layers > 1`` fails in transformers 4.57.6 (a layer's tuple
    output is fed to the next layer)."""
    config = _config(encoder_layers=num_layers)
    theirs = _randomize(hf.RTDetrEncoder(config), 2)
    ours = AIFI([AIFILayer(16, 24, num_heads=2) for _ in range(num_layers)], d_model=16).eval()
    ours.load_state_dict(theirs.state_dict())
    feature_map = torch.randn(2, 16, 3, 5)
    flat = feature_map.flatten(2).transpose(1, 2)
    position = hf.RTDetrHybridEncoder.build_2d_sincos_position_embedding(5, 3, 16)
    if num_layers == 1:
        expected = theirs(flat, pos_embed=position)[0]
    else:
        expected = flat
        for layer in theirs.layers:
            expected = layer(expected, None, position)[0]
    torch.testing.assert_close(ours(feature_map), expected.transpose(1, 2).reshape(2, 16, 3, 5), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="feature_map"):
        ours(torch.randn(2, 8, 3, 5))
    with pytest.raises(ValueError, match="d_model"):
        AIFI([AIFILayer(16, 24, num_heads=2)], d_model=18)


def test_repvgg_block_matches_transformers_and_fuses():
    theirs = _randomize(hf.RTDetrRepVggBlock(_config(encoder_hidden_dim=8)), 3)
    ours = RepVggBlock(8, activation="silu").eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, 6, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    fused = ours.fuse()
    assert [type(m) for m in fused.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))] == [nn.Conv2d]
    assert fused.conv.kernel_size == (3, 3)
    torch.testing.assert_close(fused(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("expansion", [1.0, 0.5])
def test_csp_layer_matches_transformers_and_fuses(expansion):
    theirs = _randomize(hf.RTDetrCSPRepLayer(_config(encoder_hidden_dim=8, hidden_expansion=expansion)), 4)
    ours = CSPRepLayer(16, 8, num_blocks=3, expansion=expansion, activation="silu").eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    fuse_repvgg_blocks(ours)
    assert not any(isinstance(m, RepVggBlock) for m in ours.modules())
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def _hybrid(config: RTDetrConfig) -> HybridEncoder:
    channels = config.encoder_hidden_dim
    aifis = [
        AIFI([AIFILayer(channels, config.encoder_ffn_dim, num_heads=config.encoder_attention_heads,
                        activation=config.encoder_activation_function) for _ in range(config.encoder_layers)],
             d_model=channels, temperature=config.positional_encoding_temperature)
        for _ in config.encode_proj_layers
    ]
    return HybridEncoder(aifis, config.encode_proj_layers, len(config.encoder_in_channels), channels,
                         expansion=config.hidden_expansion, activation=config.activation_function, eps=config.batch_norm_eps)


@pytest.mark.parametrize(("overrides", "sizes"), [
    ({}, [(12, 16), (6, 8), (3, 4)]),
    ({"hidden_expansion": 0.5, "activation_function": "relu", "encoder_activation_function": "relu"}, [(8, 8), (4, 4), (2, 2)]),
    ({"encoder_in_channels": [16, 16], "encode_proj_layers": [1]}, [(6, 10), (3, 5)]),
    ({"encoder_in_channels": [16, 16, 16, 16], "encode_proj_layers": [2, 3]}, [(16, 8), (8, 4), (4, 2), (2, 1)]),
])
def test_hybrid_encoder_matches_transformers(overrides, sizes):
    config = _config(**overrides)
    theirs = _randomize(hf.RTDetrHybridEncoder(config), 5)
    ours = _hybrid(config).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every name the same
    torch.manual_seed(0)
    features = [torch.randn(2, 16, h, w) for h, w in sizes]
    expected = theirs(list(features), return_dict=True).last_hidden_state
    result = ours(features)
    assert len(result) == len(expected)
    for got, want in zip(result, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fuse_repvgg_blocks(ours)
    for got, want in zip(ours(features), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ccfm_handles_odd_sizes_and_names_bad_inputs():
    """Sizes not exactly doubling (a 100x72 image at strides 8/16/32): transformers fails there; the
    authors' code upsamples bilinearly to the finer map's size, written out here for two levels."""
    ccfm = CCFM(3, 8, num_blocks=1).eval()
    features = [torch.randn(1, 8, 13, 9), torch.randn(1, 8, 7, 5), torch.randn(1, 8, 4, 3)]
    assert [tuple(o.shape) for o in ccfm(features)] == [tuple(f.shape) for f in features]
    two = _randomize(CCFM(2, 8, num_blocks=1), 7)
    fine, coarse = torch.randn(1, 8, 7, 5), torch.randn(1, 8, 4, 3)
    with torch.no_grad():
        top = two.lateral_convs[0](coarse)
        up = nn.functional.interpolate(top, size=(7, 5), mode="bilinear", align_corners=False)
        expected_fine = two.fpn_blocks[0](torch.cat([up, fine], 1))
        expected_coarse = two.pan_blocks[0](torch.cat([two.downsample_convs[0](expected_fine), top], 1))
        got_fine, got_coarse = two([fine, coarse])
    torch.testing.assert_close(got_fine, expected_fine)
    torch.testing.assert_close(got_coarse, expected_coarse)
    with pytest.raises(ValueError, match="features"):
        ccfm(features[:2])
    with pytest.raises(ValueError, match="num_levels"):
        CCFM(1, 8)
    with pytest.raises(ValueError, match="encode_indices"):
        HybridEncoder([nn.Identity()], [3], 3, 8)


def test_hybrid_encoder_gradients_match_transformers_in_training():
    """Training mode (batch statistics in the batch norms): the same outputs and the same gradients
    for inputs and every parameter."""
    config = _config()
    theirs = _randomize(hf.RTDetrHybridEncoder(config), 6).train()
    ours = _hybrid(config).train()
    ours.load_state_dict(theirs.state_dict())
    torch.manual_seed(1)
    sizes = [(8, 12), (4, 6), (2, 3)]
    ours_in = [torch.randn(2, 16, h, w, requires_grad=True) for h, w in sizes]
    theirs_in = [x.detach().clone().requires_grad_() for x in ours_in]
    weights = [torch.randn(2, 16, h, w) for h, w in sizes]
    sum((w * o).sum() for w, o in zip(weights, ours(ours_in))).backward()
    sum((w * o).sum() for w, o in zip(weights, theirs(list(theirs_in), return_dict=True).last_hidden_state)).backward()
    for mine, reference in zip(ours_in, theirs_in):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-4, atol=1e-5)
    their_grads = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, their_grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_every_public_block_is_in_the_package_docstring():
    import re

    import detr_blocks

    assert [n for n in detr_blocks.__all__ if not re.search(rf"\b{n}\b", detr_blocks.__doc__)] == []


def test_fused_hybrid_encoder_exports():
    """``torch.export`` sees through AIFI and the fused CCFM (the deployment form)."""

    class Wrapper(nn.Module):
        def __init__(self, encoder: HybridEncoder) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, fine, middle, coarse):
            return tuple(self.encoder([fine, middle, coarse]))

    encoder = fuse_repvgg_blocks(_randomize(_hybrid(_config()), 8))
    features = (torch.randn(1, 16, 8, 12), torch.randn(1, 16, 4, 6), torch.randn(1, 16, 2, 3))
    exported = torch.export.export(Wrapper(encoder), features)
    for got, want in zip(exported.module()(*features), encoder(list(features))):
        torch.testing.assert_close(got, want)
