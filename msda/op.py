"""The public op: ``msda.ms_deform_attn``, a checked call of ``torch.ops.msda.ms_deform_attn``.

The op itself (schema, kernels, fake kernels, autograd, autocast, the build-on-first-call
fallback) is put together in :mod:`msda.registration`; this function adds argument checks whose
messages name the argument, and always calls the op, so torch.compile and torch.export trace it as
one node whether or not the library has been built yet.
"""

from __future__ import annotations

import torch

from msda import registration
from msda.validation import check_inputs


def compiled_op_available(device_type: str) -> bool:
    """True when ``torch.ops.msda.ms_deform_attn`` has a compiled kernel for ``device_type``.

    Loads (and on first use builds) the extension. Not needed before torch.compile or
    torch.export: the op traces the same either way and builds on its first real call.
    """
    return registration.compiled_kernel_ready(device_type)


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
        spatial_shapes: int64 or int32 ``[L, 2]`` as (H_l, W_l).
        level_start_index: int64 or int32 ``[L]``.
        sampling_locations: ``[B, Q, M, L, P, 2]`` normalized (x, y).
        attention_weights: ``[B, Q, M, L, P]``.
        im2col_step: accepted for compatibility with the original op; any batch size works.

    Returns:
        ``[B, Q, M*D]``, differentiable w.r.t. value, sampling_locations and attention_weights.

    Runs the compiled kernel for the inputs' device; the first call in a process without a cached
    build compiles it (see :func:`msda.active_implementation`). Where it cannot be compiled, and on
    devices without a kernel, the op computes :func:`msda.ms_deform_attn_reference`.
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    return torch.ops.msda.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
