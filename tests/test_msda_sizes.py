"""Sizes past int64 indexing are refused up front, with a message naming the argument, by the Python
wrapper, the fake kernel (meta tensors) and the compiled op called directly. The tensors are meta
tensors or stride-0 expansions of one element, so nothing large is allocated."""

from __future__ import annotations

import pytest
import torch

import msda
from msda import ms_deform_attn, ms_deform_attn_reference

compiled = pytest.mark.skipif(
    msda.active_implementation("cpu").name != "compiled-cpu",
    reason=f"compiled CPU kernel unavailable: {msda.active_implementation('cpu').reason}",
)


def _huge_output_call(device: str):
    """value [1, 1, 1, 2^31] and Q = 2^33: every input is small, the output [B, Q, M*D] has 2^64 elements."""
    one = lambda *shape: torch.zeros(1, device=device).expand(*shape)  # noqa: E731
    shapes = torch.tensor([[1, 1]], device=device)
    starts = torch.tensor([0], device=device)
    queries = 2**33
    return one(1, 1, 1, 2**31), shapes, starts, one(1, queries, 1, 1, 1, 2), one(1, queries, 1, 1, 1)


def _level_call(levels: list[list[int]], starts: list[int]):
    value = torch.zeros(1, 2, 1, 8)
    return value, torch.tensor(levels), torch.tensor(starts), torch.rand(1, 3, 1, len(levels), 1, 2), torch.rand(1, 3, 1, len(levels), 1)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_output_past_int64_names_the_arguments(device):
    args = _huge_output_call(device)
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        with pytest.raises(ValueError, match=r"sampling_locations \(B=1, Q=8589934592\) and value \(M=1, D=2147483648\) give an output"):
            fn(*args)


def test_fake_kernel_refuses_an_output_past_int64():
    with pytest.raises(ValueError, match=r"give an output \[B, Q, M\*D\] of 18446744073709551616 elements"):
        torch.ops.msda.ms_deform_attn(*_huge_output_call("meta"), 64)


@compiled
def test_compiled_op_refuses_an_output_past_int64():
    with pytest.raises(RuntimeError, match=r"msda: the output \[B, Q, M\*D\] .* more than 2\^63 - 1 elements"):
        torch.ops.msda.ms_deform_attn(*_huge_output_call("cpu"), 64)


LEVEL_CASES = [
    # (levels, starts, message of the wrapper, message of the compiled op)
    ([[2**40, 2**40], [1, 1]], [0, 0], r"spatial_shapes\[0\] = \(1099511627776, 1099511627776\) has H\*W = 1208925819614629174706176",
     r"spatial_shapes\[0\] = \(1099511627776, 1099511627776\) has H\*W past 2\^63 - 1"),
    ([[2**31, 2**31], [2**31, 2**31]], [0, 2**62], r"spatial_shapes areas up to level 1 sum to 9223372036854775808",
     r"spatial_shapes areas up to level 1 sum past 2\^63 - 1"),
    ([[2**20, 2**20]], [0], r"spatial_shapes areas sum to 1099511627776 but value has S=2",
     r"spatial_shapes areas sum to 1099511627776 but value has S=2"),
]


@pytest.mark.parametrize("levels, starts, wrapper_message, op_message", LEVEL_CASES)
def test_level_sizes_past_int64_name_spatial_shapes(levels, starts, wrapper_message, op_message):
    args = _level_call(levels, starts)
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        with pytest.raises(ValueError, match=wrapper_message):
            fn(*args)


@compiled
@pytest.mark.parametrize("levels, starts, wrapper_message, op_message", LEVEL_CASES)
def test_compiled_op_names_spatial_shapes_not_an_overflowed_start(levels, starts, wrapper_message, op_message):
    args = _level_call(levels, starts)
    with pytest.raises(RuntimeError, match=op_message):
        torch.ops.msda.ms_deform_attn(*args, 64)
    grad_output = torch.zeros(1, 3, 8)
    with pytest.raises(RuntimeError, match=op_message):
        torch.ops.msda.ms_deform_attn_backward(grad_output, *args, 64)
