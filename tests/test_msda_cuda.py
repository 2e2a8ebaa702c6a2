"""The msda op on CUDA: every dtype against the fp64 reference, CPU agreement, compile, autocast.

Skipped where torch sees no GPU (the CUDA sources are still compiled by test_msda_build.py).
"""

from __future__ import annotations

import pytest
import torch

import msda
from msda import ms_deform_attn, ms_deform_attn_reference
from tests.msda_inputs import output_and_grads, random_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
CASES = [
    dict(batch=2, shapes=[(9, 11), (5, 6), (3, 3)], queries=13, heads=4, channels=32, points=4),
    dict(batch=1, shapes=[(7, 5)], queries=9, heads=3, channels=30, points=2),
    dict(batch=3, shapes=[(4, 6), (2, 3)], queries=5, heads=2, channels=71, points=3),
    dict(batch=2, shapes=[(6, 6), (3, 3), (2, 2), (1, 1)], queries=7, heads=8, channels=64, points=8),
]



def test_cuda_kernel_is_active():
    assert msda.active_implementation("cuda").name == "compiled-cuda", msda.active_implementation("cuda").reason


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_and_gradients_against_fp64_reference(dtype, case):
    inputs = random_inputs(**CASES[case], dtype=dtype, device="cuda", seed=case)
    spec = CASES[case]
    grad_output = torch.randn(spec["batch"], spec["queries"], spec["heads"] * spec["channels"], device="cuda").to(dtype)
    ours, our_grads = output_and_grads(ms_deform_attn, inputs, grad_output)
    upcast = [t.double() if t.is_floating_point() else t for t in inputs]
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, upcast, grad_output.double())
    assert ours.dtype == dtype
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(ours.double(), ref, rtol=tolerance, atol=tolerance * max(1.0, ref.abs().max().item()))
    for mine, theirs in zip(our_grads, ref_grads):
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.double(), theirs, rtol=tolerance, atol=tolerance * max(1.0, theirs.abs().max().item()))


def test_gradcheck_fp64():
    value, shapes, starts, locations, weights = random_inputs(2, [(3, 4), (2, 2)], 3, 2, 4, 2, device="cuda")
    inputs = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, s, i, l, w: ms_deform_attn(v, s, i, l, w), inputs, eps=1e-6, atol=1e-5)


def test_cpu_and_cuda_agree():
    cpu = random_inputs(**CASES[0], dtype=torch.float32)
    grad_output = torch.randn(2, 13, 128)
    cpu_out, cpu_grads = output_and_grads(ms_deform_attn, cpu, grad_output)
    cuda_out, cuda_grads = output_and_grads(ms_deform_attn, [t.cuda() for t in cpu], grad_output.cuda())
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(cuda_grads, cpu_grads):
        torch.testing.assert_close(mine.cpu(), theirs, rtol=1e-4, atol=1e-4)


def test_non_contiguous_and_misaligned_inputs():
    value, shapes, starts, locations, weights = random_inputs(**CASES[0], dtype=torch.float32, device="cuda")
    padded = torch.zeros(value.shape[:-1] + (value.shape[-1] + 1,), device="cuda")
    padded[..., 1:] = value
    shifted = padded[..., 1:]  # not contiguous, and its data pointer is 4 bytes past alignment
    weights_t = weights.transpose(1, 4).contiguous().transpose(1, 4)
    torch.testing.assert_close(
        ms_deform_attn(shifted, shapes, starts, locations, weights_t),
        ms_deform_attn_reference(value, shapes, starts, locations, weights),
    )


@pytest.mark.parametrize("batch, queries", [(0, 5), (2, 0)])
def test_empty_inputs(batch, queries):
    value, shapes, starts, locations, weights = random_inputs(2, [(3, 3)], 5, 2, 4, 2, device="cuda")
    value, locations, weights = value[:batch], locations[:batch, :queries], weights[:batch, :queries]
    value.requires_grad_()
    output = ms_deform_attn(value, shapes, starts, locations, weights)
    assert output.shape == (batch, queries, 8)
    output.sum().backward()


def test_opcheck_cuda():
    value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32, device="cuda")
    torch.library.opcheck(
        torch.ops.msda.ms_deform_attn.default,
        (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights.requires_grad_(), 64),
    )


def test_compile_fullgraph_cuda():
    value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32, device="cuda")
    compiled = torch.compile(lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w), fullgraph=True)
    torch.testing.assert_close(compiled(value, locations, weights), ms_deform_attn_reference(value, shapes, starts, locations, weights))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_without_casts(dtype):
    value, shapes, starts, locations, weights = random_inputs(2, [(4, 5), (2, 3)], 6, 2, 8, 3, dtype=torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        output = ms_deform_attn(value.to(dtype), shapes, starts, locations, weights)
    expected = ms_deform_attn_reference(value.to(dtype).float(), shapes, starts, locations, weights)
    torch.testing.assert_close(output.float(), expected, rtol=1e-5, atol=1e-5)
