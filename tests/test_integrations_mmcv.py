"""``msda.integrations.mmcv.MultiScaleDeformableAttention``: the mmcv/detrex drop-in.

Checked against our own ``msda.MultiScaleDeformableAttention`` with copied weights plus the
residual, and against an independent float64 formula of mmcv's layer written here with
``grid_sample``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import msda
from msda.integrations.mmcv import MultiScaleDeformableAttention as DropIn

SHAPES = torch.tensor([[6, 8], [3, 4], [2, 2]])
STARTS = torch.cat((SHAPES.new_zeros(1), SHAPES.prod(1).cumsum(0)[:-1]))
TOTAL = int(SHAPES.prod(1).sum())
MMCV_KEYS = {
    "sampling_offsets.weight",
    "sampling_offsets.bias",
    "attention_weights.weight",
    "attention_weights.bias",
    "value_proj.weight",
    "value_proj.bias",
    "output_proj.weight",
    "output_proj.bias",
}


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def _inputs(batch: int, queries: int, width: int, box: bool, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, width, generator=generator)
    value = torch.randn(batch, TOTAL, width, generator=generator)
    query_pos = torch.randn(batch, queries, width, generator=generator)
    identity = torch.randn(batch, queries, width, generator=generator)
    reference = torch.rand(batch, queries, len(SHAPES), 4 if box else 2, generator=generator)
    if box:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.05
    mask = torch.rand(batch, TOTAL, generator=generator) < 0.3
    return query, value, query_pos, identity, reference, mask


def _mmcv_formula_fp64(layer: DropIn, query, value, query_pos, identity, reference, mask) -> torch.Tensor:
    """mmcv's layer, batch-first, in float64, sampling each level with grid_sample."""
    params = {name: p.detach().double() for name, p in layer.named_parameters()}
    heads, levels, points = layer.num_heads, layer.num_levels, layer.num_points
    query, value, reference = (query + query_pos).double(), value.double(), reference.double()
    batch, queries, width = query.shape
    head_dim = width // heads
    projected = F.linear(value, params["value_proj.weight"], params["value_proj.bias"]).masked_fill(mask[..., None], 0.0)
    offsets = F.linear(query, params["sampling_offsets.weight"], params["sampling_offsets.bias"]).view(batch, queries, heads, levels, points, 2)
    weights = F.linear(query, params["attention_weights.weight"], params["attention_weights.bias"]).view(batch, queries, heads, levels * points)
    weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
    output = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for level, (height, width_l) in enumerate(SHAPES.tolist()):
        start = int(STARTS[level])
        if reference.shape[-1] == 2:
            scale = torch.tensor([width_l, height], dtype=torch.float64)
            locations = reference[:, :, None, level, None, :] + offsets[:, :, :, level] / scale
        else:
            locations = reference[:, :, None, level, None, :2] + offsets[:, :, :, level] / points * reference[:, :, None, level, None, 2:] * 0.5
        for head in range(heads):
            feature = projected[:, start : start + height * width_l, head * head_dim : (head + 1) * head_dim]
            feature = feature.transpose(1, 2).reshape(batch, head_dim, height, width_l)
            sampled = F.grid_sample(feature, 2 * locations[:, :, head] - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
            output[:, :, head] += (sampled * weights[:, None, :, head, level]).sum(-1).transpose(1, 2)
    attended = F.linear(output.reshape(batch, queries, -1), params["output_proj.weight"], params["output_proj.bias"])
    return identity.double() + attended


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("box", [False, True])
def test_matches_our_module_plus_residual(batch_first, box):
    ours = msda.MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=2)
    _randomize(ours)
    layer = DropIn(embed_dims=32, num_heads=4, num_levels=3, num_points=2, dropout=0.5, batch_first=batch_first).eval()
    layer.load_state_dict(ours.state_dict())
    query, value, query_pos, identity, reference, mask = _inputs(2, 5, 32, box)

    expected = identity + ours(query + query_pos, reference, value, SHAPES, STARTS, value_padding_mask=mask)
    reference_fp64 = _mmcv_formula_fp64(layer, query, value, query_pos, identity, reference, mask)

    def layout(tensor):
        return tensor if batch_first else tensor.transpose(0, 1)

    got = layer(
        layout(query),
        key=None,
        value=layout(value),
        identity=layout(identity),
        query_pos=layout(query_pos),
        key_padding_mask=mask,
        reference_points=reference,
        spatial_shapes=SHAPES,
        level_start_index=STARTS,
        attn_masks=None,  # extra keys from mmcv's transformer layers are ignored
    )
    assert got.shape == layout(query).shape
    torch.testing.assert_close(layout(got), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layout(got).double(), reference_fp64, rtol=1e-4, atol=1e-4)


def test_padding_mask_hides_padded_values():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, batch_first=True).eval()
    _randomize(layer)
    query, value, _, _, reference, mask = _inputs(1, 4, 16, box=False)
    changed = value.clone()
    changed[mask] = torch.randn_like(changed[mask]) * 100
    kwargs = dict(reference_points=reference, spatial_shapes=SHAPES, level_start_index=STARTS, key_padding_mask=mask)
    torch.testing.assert_close(layer(query, value=changed, **kwargs), layer(query, value=value, **kwargs))
    without_mask = dict(kwargs, key_padding_mask=None)
    assert not torch.allclose(layer(query, value=changed, **without_mask), layer(query, value=value, **without_mask))


def test_defaults_value_and_identity_are_query():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2).eval()
    _randomize(layer)
    query, _, _, _, reference, _ = _inputs(2, TOTAL, 16, box=False)
    query_seq_first = query.transpose(0, 1)
    got = layer(query_seq_first, reference_points=reference, spatial_shapes=SHAPES)
    expected = layer(query_seq_first, value=query_seq_first, identity=query_seq_first, reference_points=reference, spatial_shapes=SHAPES, level_start_index=STARTS)
    torch.testing.assert_close(got, expected)


def test_old_residual_argument_is_identity():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, batch_first=True).eval()
    _randomize(layer)
    query, value, _, identity, reference, _ = _inputs(2, 4, 16, box=False)
    kwargs = dict(value=value, reference_points=reference, spatial_shapes=SHAPES)
    with pytest.warns(DeprecationWarning, match="residual"):
        got = layer(query, residual=identity, **kwargs)
    torch.testing.assert_close(got, layer(query, identity=identity, **kwargs))


def test_parameters_and_initialisation_as_mmcv():
    layer = DropIn(embed_dims=32, num_heads=4, num_levels=3, num_points=2)
    assert set(layer.state_dict()) == MMCV_KEYS
    assert layer.sampling_offsets.weight.shape == (4 * 3 * 2 * 2, 32)
    assert layer.attention_weights.weight.shape == (4 * 3 * 2, 32)
    assert (layer.embed_dims, layer.num_heads, layer.num_levels, layer.num_points, layer.batch_first) == (32, 4, 3, 2, False)
    _randomize(layer)
    layer.init_weights()
    # the paper's/mmcv's start: zero weights, head h points along angle 2*pi*h/M at distances 1..P
    assert torch.count_nonzero(layer.sampling_offsets.weight) == 0
    assert torch.count_nonzero(layer.attention_weights.weight) == 0 and torch.count_nonzero(layer.attention_weights.bias) == 0
    bias = layer.sampling_offsets.bias.view(4, 3, 2, 2)
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:, :, 1], 2 * bias[:, :, 0])


def test_detrex_argument_names():
    layer = DropIn(embed_dim=32, num_heads=4, num_levels=3, num_points=2, img2col_step=32)
    assert layer.embed_dims == 32 and layer.im2col_step == 32
    positional = DropIn(32, 4, 3, 2, 32, 0.0, True)  # mmcv and detrex share this order
    assert positional.batch_first and positional.dropout.p == 0.0


def test_dropout_applies_to_the_attention_only():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, dropout=1.0, batch_first=True).train()
    query, value, _, identity, reference, _ = _inputs(2, 4, 16, box=False)
    got = layer(query, value=value, identity=identity, reference_points=reference, spatial_shapes=SHAPES, level_start_index=STARTS)
    torch.testing.assert_close(got, identity)


def test_gradients_reach_every_parameter():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, dropout=0.0, batch_first=True)
    _randomize(layer)
    query, value, query_pos, _, reference, mask = _inputs(2, 4, 16, box=True)
    layer(query, value=value, query_pos=query_pos, key_padding_mask=mask, reference_points=reference, spatial_shapes=SHAPES).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(embed_dims=32, embed_dim=64), ValueError, "embed_dim"),
        (dict(im2col_step=32, img2col_step=64), ValueError, "img2col_step"),
        (dict(value_proj_ratio=0.5), ValueError, "value_proj_ratio"),
        (dict(dropout=1.5), ValueError, "dropout"),
        (dict(batch_first="yes"), TypeError, "batch_first"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DropIn(**kwargs)


def test_forward_rejects_bad_arguments():
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, batch_first=True)
    query, value, _, _, reference, _ = _inputs(2, 4, 16, box=False)
    with pytest.raises(ValueError, match="reference_points"):
        layer(query, value=value, spatial_shapes=SHAPES)
    with pytest.raises(ValueError, match="query_pos"):
        layer(query, value=value, query_pos=query[:, :2], reference_points=reference, spatial_shapes=SHAPES)
    with pytest.raises(ValueError, match="identity"):
        layer(query, value=value, identity=query[:1], reference_points=reference, spatial_shapes=SHAPES)
