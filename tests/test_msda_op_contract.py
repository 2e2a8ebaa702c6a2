"""The op's contract beyond the numbers: int32 level tensors, device checks in every kernel (the
C++ one included), and the reference backward that serves the fallback kernel."""

from __future__ import annotations

import pytest
import torch

import msda
from msda import ms_deform_attn, ms_deform_attn_reference
from msda.reference import ms_deform_attn_reference_backward
from tests.msda_inputs import output_and_grads, random_inputs

SHAPES = [(5, 6), (3, 4), (1, 2)]


def _as_int32(inputs):
    value, shapes, starts, locations, weights = inputs
    return value, shapes.int(), starts.int(), locations, weights


@pytest.mark.parametrize("fn", [ms_deform_attn, ms_deform_attn_reference], ids=["op", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_int32_and_int64_level_tensors_give_the_same_results(fn, dtype):
    inputs = random_inputs(2, SHAPES, 7, 3, 8, 2, dtype=dtype, seed=4)
    grad_output = torch.randn(2, 7, 24, dtype=dtype)
    expected, expected_grads = output_and_grads(ms_deform_attn_reference, [t.double() if t.is_floating_point() else t for t in inputs], grad_output.double())
    for variant in (inputs, _as_int32(inputs), (*inputs[:2], inputs[2].int(), *inputs[3:])):
        output, grads = output_and_grads(fn, variant, grad_output)
        tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.double(), expected, **tolerance)
        for mine, theirs in zip(grads, expected_grads):
            torch.testing.assert_close(mine.double(), theirs, **tolerance)


def test_direct_op_call_takes_int32_level_tensors():
    value, shapes, starts, locations, weights = random_inputs(1, SHAPES, 4, 2, 8, 3, dtype=torch.float32, seed=1)
    direct = torch.ops.msda.ms_deform_attn(value, shapes.int(), starts.int(), locations, weights, 64)
    torch.testing.assert_close(direct, ms_deform_attn_reference(value, shapes, starts, locations, weights), rtol=1e-5, atol=1e-6)


def test_module_takes_int32_level_tensors():
    module = msda.MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    value, shapes, starts, _, _ = random_inputs(2, SHAPES, 1, 1, 1, 1)
    query, refs, memory = torch.randn(2, 5, 16), torch.rand(2, 5, 3, 2), torch.randn(2, value.shape[1], 16)
    torch.testing.assert_close(module(query, refs, memory, shapes.int(), starts.int()), module(query, refs, memory, shapes, starts))


@pytest.mark.parametrize("argument", [1, 2, 3, 4])
def test_direct_op_call_with_an_input_on_meta_raises(argument):
    """meta outranks CPU in dispatch, so this reaches the fake kernel, which must refuse it."""
    args = list(random_inputs(1, SHAPES, 4, 2, 8, 3, dtype=torch.float32))
    args[argument] = args[argument].to("meta")
    name = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"][argument]
    with pytest.raises(ValueError, match=f"{name} is on meta but value is on cpu"):
        torch.ops.msda.ms_deform_attn(*args, 64)


def _cpu_kernel_only() -> torch._C.DispatchKeySet:
    return torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


@pytest.mark.parametrize("argument", [1, 2, 3, 4])
def test_the_compiled_cpu_kernel_itself_checks_devices(argument):
    """Called straight at its dispatch key (no fake kernel, no Python checks), the C++ kernel
    refuses a meta input instead of reading memory that does not exist."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key("msda::ms_deform_attn", "CPU") and not msda.loader.is_compiled("cpu"):
        pytest.skip("compiled CPU kernel unavailable")
    args = list(random_inputs(1, SHAPES, 4, 2, 8, 3, dtype=torch.float32))
    args[argument] = args[argument].to("meta")
    name = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"][argument]
    with pytest.raises(RuntimeError, match=f"msda: {name} is on meta but value is on cpu"):
        torch.ops.msda.ms_deform_attn.default.redispatch(_cpu_kernel_only(), *args, 64)
    grad = torch.randn(1, 4, 16)
    with pytest.raises(RuntimeError, match=f"msda: {name} is on meta but value is on cpu"):
        torch.ops.msda.ms_deform_attn_backward.default.redispatch(_cpu_kernel_only(), grad, *args, 64)


def test_the_compiled_cpu_kernel_checks_the_gradient_device():
    if not msda.loader.is_compiled("cpu"):
        pytest.skip("compiled CPU kernel unavailable")
    args = random_inputs(1, SHAPES, 4, 2, 8, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="msda: grad_output is on meta but value is on cpu"):
        torch.ops.msda.ms_deform_attn_backward.default.redispatch(_cpu_kernel_only(), torch.empty(1, 4, 16, device="meta"), *args, 64)


@pytest.mark.parametrize("seed", range(3))
def test_reference_backward_matches_autograd_of_the_reference(seed):
    inputs = random_inputs(2, SHAPES, 5, 2, 3, 2, seed=seed)
    grad_output = torch.randn(2, 5, 6, dtype=torch.float64)
    _, expected = output_and_grads(ms_deform_attn_reference, inputs, grad_output)
    value, shapes, starts, locations, weights = inputs
    got = ms_deform_attn_reference_backward(grad_output, value, shapes.int(), starts, locations, weights)
    for name, mine, theirs in zip(("value", "sampling_locations", "attention_weights"), got, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"grad {n}: {m}")

