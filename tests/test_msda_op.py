"""The msda op on CPU against the fp64 pure-PyTorch reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

import msda
from msda import ms_deform_attn, ms_deform_attn_reference
from tests.msda_inputs import level_tensors, output_and_grads, random_inputs

pytestmark = pytest.mark.skipif(
    msda.active_implementation("cpu").name != "compiled-cpu",
    reason=f"compiled CPU kernel unavailable: {msda.active_implementation('cpu').reason}",
)



def _random_case(seed: int) -> dict:
    rng = random.Random(seed)
    levels = rng.randint(1, 5)
    return dict(
        batch=rng.randint(1, 3),
        shapes=[(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(levels)],
        queries=rng.randint(1, 12),
        heads=rng.randint(1, 16),
        channels=rng.choice([1, 4, 16, 30, 32, 64, 71]),
        points=rng.randint(1, 8),
    )


@pytest.mark.parametrize("seed", range(12))
def test_forward_and_gradients_match_reference_fp64(seed):
    case = _random_case(seed)
    inputs = random_inputs(**case, seed=seed)
    grad_output = torch.randn(case["batch"], case["queries"], case["heads"] * case["channels"], dtype=torch.float64)
    ours, our_grads = output_and_grads(ms_deform_attn, inputs, grad_output)
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, inputs, grad_output)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for name, mine, theirs in zip(("value", "sampling_locations", "attention_weights"), our_grads, ref_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("channels", [2, 3, 32])
def test_gradcheck_fp64(channels):
    value, shapes, starts, locations, weights = random_inputs(2, [(3, 4), (2, 2)], 3, 2, channels, 2, seed=channels)
    inputs = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, s, i, l, w: ms_deform_attn(v, s, i, l, w), inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)]
)
def test_low_precision_dtypes_against_fp64(dtype, tolerance):
    inputs = random_inputs(2, [(8, 9), (4, 5), (2, 3)], 10, 4, 32, 4, seed=3)
    grad_output = torch.randn(2, 10, 4 * 32, dtype=torch.float64).to(dtype)
    low = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    # the fp64 reference sees the same (rounded) inputs, so only the kernel's own rounding is measured
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, [t.double() if t.is_floating_point() else t for t in low], grad_output.double())
    ours, our_grads = output_and_grads(ms_deform_attn, low, grad_output)
    assert ours.dtype == dtype and all(g.dtype == dtype for g in our_grads)
    scale = lambda t: tolerance * max(1.0, t.abs().max().item())  # noqa: E731
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=scale(ref))
    for mine, theirs in zip(our_grads, ref_grads):
        torch.testing.assert_close(mine.double(), theirs, rtol=0, atol=scale(theirs))


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = random_inputs(2, [(5, 6), (3, 3)], 7, 3, 8, 2, seed=5)
    # the same numbers, laid out transposed in memory
    value_t = value.transpose(0, 2).contiguous().transpose(0, 2)
    locations_t = locations.permute(5, 4, 3, 2, 1, 0).contiguous().permute(5, 4, 3, 2, 1, 0)
    weights_t = weights.transpose(1, 4).contiguous().transpose(1, 4)
    assert not value_t.is_contiguous() and not locations_t.is_contiguous() and not weights_t.is_contiguous()
    grad_output = torch.randn(2, 7, 24, dtype=torch.float64)
    ours, our_grads = output_and_grads(ms_deform_attn, (value_t, shapes, starts, locations_t, weights_t), grad_output)
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, (value, shapes, starts, locations, weights), grad_output)
    torch.testing.assert_close(ours, ref)
    for mine, theirs in zip(our_grads, ref_grads):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("batch, queries", [(0, 5), (2, 0), (0, 0)])
def test_empty_batch_or_queries(batch, queries):
    value, shapes, starts, locations, weights = random_inputs(max(batch, 1), [(3, 3)], max(queries, 1), 2, 4, 2)
    value, locations, weights = value[:batch], locations[:batch, :queries], weights[:batch, :queries]
    value.requires_grad_()
    output = ms_deform_attn(value, shapes, starts, locations, weights)
    assert output.shape == (batch, queries, 8)
    output.sum().backward()
    assert value.grad.shape == value.shape and not value.grad.any()


def test_batch_not_divisible_by_im2col_step():
    inputs = random_inputs(3, [(4, 4)], 5, 2, 4, 2)
    torch.testing.assert_close(ms_deform_attn(*inputs, im2col_step=2), ms_deform_attn_reference(*inputs))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30, -1e30])
@pytest.mark.parametrize(
    "dtype, channels, queries",
    [(torch.float64, 8, 6), (torch.float32, 4, 6), (torch.float32, 8, 6), (torch.float32, 8, 400)],
    ids=["fp64", "fp32-scalar", "fp32-in-place", "fp32-padded-maps"],
)
def test_non_finite_locations_give_nan_where_the_reference_does(bad, dtype, channels, queries):
    """NaN in, NaN out, as grid_sample: a NaN or infinite location makes the output row and the
    gradients that depend on it NaN, exactly where the fp64 reference has NaN; a huge finite one reads
    nothing. (A diverging layer must reach the training loop's NaN-loss check.)"""
    shapes = [(9, 11), (5, 6)]  # S = 129: 6 queries read value in place, 400 use the padded maps
    value, shapes, starts, locations, weights = random_inputs(1, shapes, queries, 2, channels, 3, dtype=dtype)
    locations[0, 2, 1, 0, 1, 0] = bad  # x of one point
    locations[0, 4, 0, 1, 2, 1] = bad  # y of another
    locations[0, 5, 1, 1, 0, :] = bad  # both coordinates of a third
    grad_output = torch.randn(1, queries, 2 * channels, dtype=dtype, generator=torch.Generator().manual_seed(1))
    inputs = (value, shapes, starts, locations, weights)
    ours, our_grads = output_and_grads(ms_deform_attn, inputs, grad_output)
    as64 = [t.double() if t.is_floating_point() else t for t in inputs]
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, as64, grad_output.double())
    assert bool(ref.isnan().any()) == (not math.isfinite(bad))  # the behaviour this test holds us to
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.equal(ours.isnan(), ref.isnan())
    torch.testing.assert_close(ours.double(), ref, rtol=tolerance, atol=tolerance, equal_nan=True)
    for name, mine, theirs in zip(("value", "sampling_locations", "attention_weights"), our_grads, ref_grads):
        assert torch.equal(mine.isnan(), theirs.isnan()), f"grad {name}: NaN at {mine.isnan().nonzero().tolist()}, reference {theirs.isnan().nonzero().tolist()}"
        torch.testing.assert_close(mine.double(), theirs, rtol=tolerance, atol=tolerance, equal_nan=True, msg=lambda m, n=name: f"grad {n}: {m}")


def _valid_inputs():
    return list(random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32))


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "value must have shape"),
        (lambda a: a.__setitem__(0, a[0][:, :, :1]), ValueError, "sampling_locations must have shape"),
        (lambda a: a.__setitem__(3, a[3][..., :1, :, :]), ValueError, "sampling_locations must have shape"),
        (lambda a: a.__setitem__(4, a[4][..., :2]), ValueError, "attention_weights must have shape"),
        (lambda a: a.__setitem__(4, a[4][1:]), ValueError, "attention_weights must have shape"),
        (lambda a: a.__setitem__(1, torch.tensor([[4, 5], [2, 2]])), ValueError, "areas sum to"),
        (lambda a: a.__setitem__(2, torch.tensor([0, 19])), ValueError, "level_start_index must be"),
        (lambda a: a.__setitem__(2, torch.tensor([0])), ValueError, "level_start_index must have"),
        (lambda a: a.__setitem__(1, a[1].float()), TypeError, "spatial_shapes must be int64 or int32"),
        (lambda a: a.__setitem__(2, a[2].short()), TypeError, "level_start_index must be int64 or int32"),
        (lambda a: a.__setitem__(0, a[0].long()), TypeError, "value must be a floating-point"),
        (lambda a: a.__setitem__(3, a[3].double()), TypeError, "sampling_locations has dtype"),
        (lambda a: a.__setitem__(1, torch.tensor([[4, 5], [0, 3]])), ValueError, "positive"),
        (lambda a: a.__setitem__(3, a[3].to("meta")), ValueError, "sampling_locations is on meta"),
        (lambda a: a.__setitem__(0, a[0].numpy()), TypeError, "value must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(mutate, error, match):
    args = _valid_inputs()
    mutate(args)
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        with pytest.raises(error, match=match):
            fn(*args)


def test_bad_im2col_step():
    with pytest.raises(ValueError, match="im2col_step"):
        ms_deform_attn(*_valid_inputs(), im2col_step=0)


def test_direct_op_call_checks_shapes_too():
    value, shapes, starts, locations, weights = _valid_inputs()
    with pytest.raises(RuntimeError, match="areas sum to"):
        torch.ops.msda.ms_deform_attn(value, torch.tensor([[9, 9], [2, 3]]), torch.tensor([0, 81]), locations, weights, 64)


def test_opcheck():
    for dtype in (torch.float32, torch.float64):
        value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=dtype)
        torch.library.opcheck(
            torch.ops.msda.ms_deform_attn.default,
            (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_(), 64),
        )


def test_torch_compile_fullgraph():
    value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32)

    def attend(v, l, w):
        return (ms_deform_attn(v * 2, shapes, starts, l, w.softmax(-1)) + 1).sum()

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    eager_inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    compiled(*inputs).backward()
    attend(*eager_inputs).backward()
    for mine, theirs in zip(inputs, eager_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_torch_export():
    value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32)

    class Attend(torch.nn.Module):
        def forward(self, v, s, i, l, w):
            return ms_deform_attn(v, s, i, l, w)

    program = torch.export.export(Attend(), (value, shapes, starts, locations, weights))
    assert any("msda.ms_deform_attn" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(value, shapes, starts, locations, weights), ms_deform_attn_reference(value, shapes, starts, locations, weights))


def test_cpu_autocast_runs_in_fp32():
    value, shapes, starts, locations, weights = random_inputs(1, [(4, 5)], 6, 2, 8, 3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights)
    assert output.dtype == torch.float32
    expected = ms_deform_attn_reference(value.bfloat16().float(), shapes, starts, locations, weights)
    torch.testing.assert_close(output, expected)


def test_active_implementation_reports_compiled_cpu():
    info = msda.active_implementation("cpu")
    assert info.name == "compiled-cpu" and "compiled" in info.reason
    assert msda.active_implementation("mps").name == "reference"


def test_single_level_single_pixel_map():
    shapes, starts = level_tensors([(1, 1)])
    value = torch.randn(1, 1, 1, 3, dtype=torch.float64)
    locations = torch.full((1, 2, 1, 1, 1, 2), 0.5, dtype=torch.float64)  # the pixel centre
    weights = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, locations, weights), value.view(1, 1, 3).expand(1, 2, 3))
