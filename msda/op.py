"""The public op: ``msda.ms_deform_attn``, backed by ``torch.ops.msda.ms_deform_attn``.

The schema and kernels live in C++ (``csrc/``). This file registers, from Python, what compile,
export and autocast need: fake kernels for the forward and backward ops, the autograd formula
(whose backward calls the backward op, so graphs see through it) and autocast rules.
"""

from __future__ import annotations

import threading

import torch

from msda import loader
from msda.reference import ms_deform_attn_reference
from msda.validation import check_inputs

_registered = False
_register_lock = threading.Lock()


def _fake_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    batch, _, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    return value.new_empty(batch, queries, heads * channels)


def _fake_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.im2col_step = im2col_step


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = torch.ops.msda.ms_deform_attn_backward(
        grad_output.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights, ctx.im2col_step
    )
    return grad_value, None, None, grad_locations, grad_weights, None


def register_python_side() -> None:
    """Attach fake kernels, autograd and autocast to the C++ ops (once per process)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        torch.library.register_fake("msda::ms_deform_attn")(_fake_forward)
        torch.library.register_fake("msda::ms_deform_attn_backward")(_fake_backward)
        torch.library.register_autograd("msda::ms_deform_attn", _backward, setup_context=_setup_context)
        # Mixed-precision callers hand us fp16/bf16 values with fp32 locations; the kernels want
        # one dtype, so autocast runs the op in fp32 (the precision the original op always used).
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast("msda::ms_deform_attn", device_type, torch.float32)
        _registered = True


def compiled_op_available(device_type: str) -> bool:
    """True when ``torch.ops.msda.ms_deform_attn`` has a compiled kernel for ``device_type``.

    Loads (and on first use builds) the extension. Under torch.compile / torch.export only what is
    already loaded counts, as a plain read that the tracer folds into a constant: build the module
    (``MultiScaleDeformableAttention`` loads the op on construction) or call the op once eagerly
    before compiling, or the traced graph uses the reference.
    """
    if torch.compiler.is_compiling():
        return loader.loaded(device_type) and _registered
    if not loader.is_compiled(device_type):
        return False
    if not _registered:
        register_python_side()
    return True


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Multi-scale deformable attention.

    For every query q and head m: ``out[b, q, m*D:(m+1)*D] = Σ_l Σ_p a[b,q,m,l,p] ·
    bilinear(value_l[b, :, m], loc[b,q,m,l,p])`` where a normalized location (x, y) on level l reads
    pixel coordinates (x·W_l − 0.5, y·H_l − 0.5) and corners outside the map read as zero (the same
    function as ``grid_sample(bilinear, zeros, align_corners=False)``).

    Args:
        value: ``[B, S, M, D]``, S = Σ H_l·W_l, levels flattened in order, each row-major.
        spatial_shapes: int64 ``[L, 2]`` as (H_l, W_l).
        level_start_index: int64 ``[L]``.
        sampling_locations: ``[B, Q, M, L, P, 2]`` normalized (x, y).
        attention_weights: ``[B, Q, M, L, P]``.
        im2col_step: accepted for compatibility with the original op; any batch size works.

    Returns:
        ``[B, Q, M*D]``, differentiable w.r.t. value, sampling_locations and attention_weights.

    Uses the compiled kernel for the inputs' device when there is one (see
    :func:`msda.active_implementation`), otherwise :func:`msda.ms_deform_attn_reference`.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    if compiled_op_available(value.device.type):
        return torch.ops.msda.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
        )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
