"""``torch.ops.msda.ms_deform_attn`` and ``torch.ops.msda.ms_deform_attn_backward``, made whole.

``import msda`` runs :func:`register`, so both ops resolve in every fresh process:

- the schemas: defined here unless the compiled library, loaded first from a verified cache,
  already defined them (``csrc/ms_deform_attn.cpp`` defines only what is missing, so the two never
  collide); an existing definition that differs from :data:`SCHEMAS` is an error;
- fake kernels (which also check devices, so a direct call mixing ``meta`` and real tensors
  raises), the autograd formula (its backward calls the backward op) and autocast rules;
- a ``CompositeExplicitAutograd`` fallback kernel per op. The compiled library registers ``CPU``
  and ``CUDA`` kernels, which the dispatcher prefers. Until they exist, the fallback serves: on
  first call it builds and loads the library (its kernels then take over) and calls the op again;
  where no build is possible, and on other devices, it computes the reference.

So the op traces into torch.compile / torch.export graphs as one node from the first moment,
whether or not it has been built, and runs compiled wherever a compiler is.
"""

from __future__ import annotations

import threading

import torch

from msda import loader
from msda.reference import ms_deform_attn_reference, ms_deform_attn_reference_backward
from msda.validation import check_inputs

NAMESPACE = "msda"
SCHEMAS = {
    "ms_deform_attn": (
        "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights, int im2col_step) -> Tensor"
    ),
    "ms_deform_attn_backward": (
        "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
        "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
        "int im2col_step) -> (Tensor, Tensor, Tensor)"
    ),
}
_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

_library: torch.library.Library | None = None
_register_lock = threading.Lock()


def _define_missing(library: torch.library.Library) -> None:
    for name, schema in SCHEMAS.items():
        qualified = f"{NAMESPACE}::{name}"
        existing = [str(s) for s in torch._C._jit_get_schemas_for_operator(qualified)]
        if not existing:
            library.define(schema)
            continue
        expected = str(torch._C.parse_schema(f"{NAMESPACE}::{schema}"))
        if expected not in existing:
            raise RuntimeError(f"msda: {qualified} is already defined as {existing} but msda expects '{expected}'")


def compiled_kernel_ready(device_type: str) -> bool:
    """Build and load the library if needed; True when its kernel for ``device_type`` is registered."""
    key = _DEVICE_KEYS.get(device_type)
    if key is None:
        return False
    loader.ensure_loaded()
    return loader.loaded(device_type) and torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::ms_deform_attn", key)


def _fallback_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    if compiled_kernel_ready(value.device.type):  # the library's kernel is registered now: dispatch to it
        return torch.ops.msda.ms_deform_attn.default(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)


def _fallback_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    args = (grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    if compiled_kernel_ready(value.device.type):
        return torch.ops.msda.ms_deform_attn_backward.default(*args)
    return ms_deform_attn_reference_backward(*args)


def _fake_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    batch, _, heads, channels = value.shape
    return value.new_empty(batch, sampling_locations.shape[1], heads * channels)


def _fake_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    if grad_output.device != value.device:
        raise ValueError(f"grad_output is on {grad_output.device} but value is on {value.device}; all inputs must share a device")
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


def register() -> None:
    """Define the ops (if the library has not) and attach everything Python provides; once per process."""
    global _library
    with _register_lock:
        if _library is not None:
            return
        library = torch.library.Library(NAMESPACE, "FRAGMENT")
        _define_missing(library)
        library.impl("ms_deform_attn", _fallback_forward, "CompositeExplicitAutograd")
        library.impl("ms_deform_attn_backward", _fallback_backward, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::ms_deform_attn", _fake_forward, lib=library)
        torch.library.register_fake(f"{NAMESPACE}::ms_deform_attn_backward", _fake_backward, lib=library)
        torch.library.register_autograd(f"{NAMESPACE}::ms_deform_attn", _backward, setup_context=_setup_context, lib=library)
        # Mixed-precision callers hand us fp16/bf16 values with fp32 locations; the kernels want
        # one dtype, so autocast runs the op in fp32 (the precision the original op always used).
        for device_type in ("cpu", "cuda"):
            torch.library.register_autocast(f"{NAMESPACE}::ms_deform_attn", device_type, torch.float32, lib=library)
        _library = library
