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
        (dict(value_proj_ratio=-1.0), ValueError, "value_proj_ratio"),
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


# --- mmcv's own behaviours (read from mmcv's ops/multi_scale_deform_attn.py and its tests) -------------
from msda.integrations.mmcv import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch  # noqa: E402
from tests.msda_inputs import random_inputs  # noqa: E402


def _mmcv_op_inputs(channels: int = 2, dtype=torch.float32, seed: int = 3):
    """mmcv's test setting: two levels (6, 4) and (3, 2), small values, weights summing to one."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 4], [3, 2]])
    starts = torch.tensor([0, 24])
    value = torch.rand(1, 30, 2, channels, generator=generator) * 0.01
    locations = torch.rand(1, 2, 2, 2, 2, 2, generator=generator)
    weights = torch.rand(1, 2, 2, 2, 2, generator=generator) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value.to(dtype), shapes, starts, locations.to(dtype), weights.to(dtype)


def test_embed_dims_not_divisible_by_num_heads_raises_value_error():
    with pytest.raises(ValueError, match="divisible"):
        DropIn(embed_dims=256, num_heads=7)


@pytest.mark.parametrize("ratio, width", [(1.0, 6), (0.5, 3), (2.0, 12)])
def test_value_proj_ratio_gives_mmcv_parameter_shapes_and_runs(ratio, width):
    layer = DropIn(embed_dims=6, num_heads=3, num_levels=2, num_points=4, value_proj_ratio=ratio)
    layer.init_weights()
    shapes = {name: tuple(p.shape) for name, p in layer.state_dict().items()}
    assert shapes["value_proj.weight"] == (width, 6) and shapes["value_proj.bias"] == (width,)
    assert shapes["output_proj.weight"] == (6, width) and shapes["output_proj.bias"] == (6,)
    assert shapes["sampling_offsets.weight"] == (3 * 2 * 4 * 2, 6) and shapes["attention_weights.weight"] == (3 * 2 * 4, 6)
    # a state dict with mmcv's shapes loads, and the forward matches the float64 formula
    _randomize(layer)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    other = DropIn(embed_dims=6, num_heads=3, num_levels=2, num_points=4, value_proj_ratio=ratio, batch_first=True).eval()
    other.load_state_dict(state)
    spatial, starts = torch.tensor([[2, 2], [1, 1]]), torch.tensor([0, 4])
    generator = torch.Generator().manual_seed(0)
    query, value = torch.rand(1, 5, 6, generator=generator), torch.rand(1, 5, 6, generator=generator)
    reference = torch.rand(1, 5, 2, 2, generator=generator)
    got = other(query, value=value, reference_points=reference, spatial_shapes=spatial.int(), level_start_index=starts.int())
    params = {k: v.double() for k, v in state.items()}
    projected = F.linear(value.double(), params["value_proj.weight"], params["value_proj.bias"]).view(1, 5, 3, width // 3)
    offsets = F.linear(query.double(), params["sampling_offsets.weight"], params["sampling_offsets.bias"]).view(1, 5, 3, 2, 4, 2)
    weights = F.linear(query.double(), params["attention_weights.weight"], params["attention_weights.bias"]).view(1, 5, 3, 8).softmax(-1).view(1, 5, 3, 2, 4)
    locations = reference.double()[:, :, None, :, None, :] + offsets / spatial.flip(-1).double()[None, None, None, :, None, :]
    attended = msda.ms_deform_attn_reference(projected, spatial, starts, locations, weights)
    expected = query.double() + F.linear(attended, params["output_proj.weight"], params["output_proj.bias"])
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_value_proj_ratio_that_does_not_split_into_heads_is_refused():
    with pytest.raises(ValueError, match="value_proj_ratio"):
        DropIn(embed_dims=8, num_heads=4, value_proj_ratio=0.3)


def test_mmcv_smoke_setting_embed_dims_3_with_int32_shapes():
    layer = DropIn(embed_dims=3, num_levels=2, num_heads=3)
    layer.init_weights()
    query = torch.rand(5, 1, 3)
    for dtype in (torch.int64, torch.int32):
        shapes, starts = torch.tensor([[2, 2], [1, 1]], dtype=dtype), torch.tensor([0, 4], dtype=dtype)
        out = layer.eval()(query, query, query, reference_points=torch.rand(1, 5, 2, 2), spatial_shapes=shapes, level_start_index=starts)
        assert out.shape == (5, 1, 3) and out.dtype == torch.float32


@pytest.mark.parametrize("shape_dtype", [torch.int64, torch.int32])
def test_function_apply_equals_pytorch_function_in_double(shape_dtype):
    value, shapes, starts, locations, weights = _mmcv_op_inputs(dtype=torch.float64)
    shapes, starts = shapes.to(shape_dtype), starts.to(shape_dtype)
    expected = msda.ms_deform_attn_reference(value, shapes, starts, locations, weights)
    by_function = MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations, weights, 2)
    by_pytorch = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
    by_list = multi_scale_deformable_attn_pytorch(value, [(6, 4), (3, 2)], locations, weights)
    for got in (by_function, by_pytorch, by_list):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("channels", [4, 30, 71])
def test_function_apply_gradcheck(channels):
    value, shapes, starts, locations, weights = random_inputs(1, [(3, 2), (2, 1)], 2, 2, channels, 2, seed=channels)
    inputs = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_(), torch.tensor(2))
    assert torch.autograd.gradcheck(MultiScaleDeformableAttnFunction.apply, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_function_apply_returns_values_dtype_under_autocast(autocast_dtype):
    value, shapes, starts, locations, weights = _mmcv_op_inputs()
    expected = msda.ms_deform_attn_reference(value.double(), shapes, starts, locations.double(), weights.double())
    with torch.autocast("cpu", dtype=autocast_dtype):
        as_float = MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations, weights, 2)
        as_low = MultiScaleDeformableAttnFunction.apply(value.to(autocast_dtype), shapes, starts, locations, weights, 2)
    assert as_float.dtype == torch.float32 and as_low.dtype == autocast_dtype  # mmcv: the value's dtype
    torch.testing.assert_close(as_float.double(), expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(as_low.double(), expected, rtol=0, atol=1e-4)


def test_pytorch_function_dtypes_follow_grid_sample():
    value, shapes, starts, locations, weights = _mmcv_op_inputs()
    half = value.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast runs grid_sample in fp32
        assert multi_scale_deformable_attn_pytorch(half, shapes, locations, weights).dtype == torch.float32
        assert multi_scale_deformable_attn_pytorch(half, shapes, locations.bfloat16(), weights.bfloat16()).dtype == torch.float32
    # outside autocast: value's dtype, promoted by the weights it is multiplied with ...
    assert multi_scale_deformable_attn_pytorch(half, shapes, locations.bfloat16(), weights.bfloat16()).dtype == torch.bfloat16
    assert multi_scale_deformable_attn_pytorch(half, shapes, locations.bfloat16(), weights).dtype == torch.float32
    # ... and value and locations must agree, as grid_sample requires
    with pytest.raises(TypeError, match="sampling_locations has dtype"):
        multi_scale_deformable_attn_pytorch(half, shapes, locations, weights)


def test_layer_output_dtype_under_autocast_as_mmcv():
    """mmcv on CPU: fp32 attention (grid_sample) -> output_proj in the autocast dtype -> + identity."""
    layer = DropIn(embed_dims=16, num_heads=2, num_levels=3, num_points=2, batch_first=True).eval()
    _randomize(layer)
    query, value, _, identity, reference, _ = _inputs(2, 4, 16, box=False)
    kwargs = dict(value=value, reference_points=reference, spatial_shapes=SHAPES.int(), level_start_index=STARTS.int())
    expected = layer(query, identity=identity, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(query, identity=identity, **kwargs)
        low = layer(query, identity=identity.bfloat16(), **kwargs)
    assert got.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05 * expected.abs().max().item())
