"""msda.MultiScaleDeformableAttention: parameters, initialisation, forward against references."""

from __future__ import annotations

import math

import pytest
import torch

from msda import MultiScaleDeformableAttention, ms_deform_attn_reference
from tests.msda_inputs import level_tensors

SHAPES = [(6, 7), (3, 4)]


def _inputs(batch=2, queries=5, embed_dim=32, ref_dim=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes, starts = level_tensors(SHAPES)
    total = int(shapes.prod(1).sum())
    query = torch.randn(batch, queries, embed_dim, generator=generator)
    value = torch.randn(batch, total, embed_dim, generator=generator)
    refs = torch.rand(batch, queries, len(SHAPES), ref_dim, generator=generator) * 0.8 + 0.1
    return query, refs, value, shapes, starts


@pytest.mark.parametrize("heads, levels, points", [(8, 4, 4), (2, 1, 3), (4, 2, 1)])
def test_parameter_names_shapes_and_paper_init(heads, levels, points):
    module = MultiScaleDeformableAttention(embed_dim=64, num_heads=heads, num_levels=levels, num_points=points)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {
        "sampling_offsets.weight": (heads * levels * points * 2, 64),
        "sampling_offsets.bias": (heads * levels * points * 2,),
        "attention_weights.weight": (heads * levels * points, 64),
        "attention_weights.bias": (heads * levels * points,),
        "value_proj.weight": (64, 64),
        "value_proj.bias": (64,),
        "output_proj.weight": (64, 64),
        "output_proj.bias": (64,),
    }
    assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
    bias = module.sampling_offsets.bias.view(heads, levels, points, 2)
    for head in range(heads):
        angle = 2 * math.pi * head / heads
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(points):
            expected = (direction * (point + 1)).expand(levels, 2)
            torch.testing.assert_close(bias[head, :, point], expected)


def _expected(module, query, refs, value, shapes, starts, mask=None):
    """The module's computation written out directly, with the fp64 reference op."""
    module = module.double()
    query, refs, value = query.double(), refs.double(), value.double()
    batch, queries, _ = query.shape
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    projected = module.value_proj(value)
    if mask is not None:
        projected = projected * (~mask)[..., None]
    projected = projected.view(batch, value.shape[1], heads, -1)
    offsets = module.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
    weights = module.attention_weights(query).view(batch, queries, heads, -1).softmax(-1).view(batch, queries, heads, levels, points)
    if refs.shape[-1] == 2:
        size = shapes.flip(-1).double()  # (W, H)
        locations = refs[:, :, None, :, None] + offsets / size[None, None, None, :, None]
    else:
        locations = refs[:, :, None, :, None, :2] + offsets / points * refs[:, :, None, :, None, 2:] / 2
    return module.output_proj(ms_deform_attn_reference(projected, shapes, starts, locations, weights))


@pytest.mark.parametrize("ref_dim", [2, 4])
@pytest.mark.parametrize("use_mask", [False, True])
def test_forward_matches_direct_computation(ref_dim, use_mask):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    for parameter in module.parameters():  # leave the zero init, so offsets and weights vary per query
        torch.nn.init.normal_(parameter, std=0.1)
    query, refs, value, shapes, starts = _inputs(ref_dim=ref_dim)
    mask = torch.rand(value.shape[:2]) < 0.3 if use_mask else None
    output = module(query, refs, value, shapes, starts, value_padding_mask=mask)
    expected = _expected(module, query, refs, value, shapes, starts, mask)
    torch.testing.assert_close(output.double(), expected, rtol=1e-4, atol=1e-5)


def test_padding_mask_hides_padded_values():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    query, refs, value, shapes, starts = _inputs()
    mask = torch.zeros(value.shape[:2], dtype=torch.bool)
    mask[:, 10:20] = True
    changed = value.clone()
    changed[:, 10:20] = 1e3 * torch.randn_like(changed[:, 10:20])
    torch.testing.assert_close(
        module(query, refs, value, shapes, starts, mask), module(query, refs, changed, shapes, starts, mask)
    )


def test_reference_switch_gives_same_output():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    reference = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3, use_reference=True)
    reference.load_state_dict(module.state_dict())
    inputs = _inputs()
    torch.testing.assert_close(module(*inputs), reference(*inputs), rtol=1e-5, atol=1e-6)


def test_use_reference_is_the_quiet_way_to_the_reference(monkeypatch):
    """use_reference=True (the documented way) calls the reference, never the op, and warns nothing."""
    import warnings

    from msda import module as module_file

    def no_op(*args, **kwargs):
        raise AssertionError("use_reference=True must not call the op")

    monkeypatch.setattr(module_file, "ms_deform_attn", no_op)
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3, use_reference=True)
    inputs = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = module(*inputs)
    torch.testing.assert_close(output.double(), _expected(module, *inputs), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="use_reference must be a bool"):
        MultiScaleDeformableAttention(embed_dim=32, num_heads=4, use_reference="yes")


def test_matches_transformers_module_with_copied_weights():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deformable_detr import modeling_deformable_detr as hf

    config = transformers.DeformableDetrConfig(d_model=32, num_feature_levels=2, disable_custom_kernels=True)
    theirs = hf.DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=3).eval()
    ours = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    for parameter in theirs.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items()})
    for ref_dim in (2, 4):
        query, refs, value, shapes, starts = _inputs(ref_dim=ref_dim)
        valid = torch.rand(value.shape[:2]) > 0.2
        expected, _ = theirs(
            hidden_states=query,
            attention_mask=valid,
            encoder_hidden_states=value,
            reference_points=refs,
            spatial_shapes=shapes,
            spatial_shapes_list=[tuple(s) for s in shapes.tolist()],
            level_start_index=starts,
        )
        torch.testing.assert_close(ours(query, refs, value, shapes, starts, ~valid), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embed_dim=30, num_heads=4), "divisible"),
        (dict(num_levels=0), "num_levels"),
        (dict(num_points=-1), "num_points"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleDeformableAttention(**kwargs)


def test_bad_forward_inputs_name_the_argument():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    query, refs, value, shapes, starts = _inputs()
    with pytest.raises(ValueError, match="reference_points"):
        module(query, refs[..., :1], value, shapes, starts)
    with pytest.raises(ValueError, match="query"):
        module(query[..., :8], refs, value, shapes, starts)
    with pytest.raises(ValueError, match="value_padding_mask"):
        module(query, refs, value, shapes, starts, torch.zeros(2, 3, dtype=torch.bool))


def test_gradients_reach_every_parameter():
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    torch.nn.init.normal_(module.attention_weights.weight, std=0.1)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1)
    module(*_inputs()).square().sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
