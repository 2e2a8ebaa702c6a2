"""mmcv's function-level names for the op, running msda's op, with mmcv's dtype behaviour.

``from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction,
multi_scale_deformable_attn_pytorch`` becomes ``from msda.integrations.mmcv import ...``.
Both are re-exported by :mod:`msda.integrations.mmcv`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from msda.op import ms_deform_attn
from msda.validation import autocast_active


def _without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if autocast_active(device):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _as_shapes(value: torch.Tensor, spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    if isinstance(spatial_shapes, torch.Tensor):
        return spatial_shapes
    try:
        return torch.as_tensor([[int(h), int(w)] for h, w in spatial_shapes], dtype=torch.int64, device=value.device)
    except (TypeError, ValueError) as error:
        raise TypeError(f"value_spatial_shapes must be an integer tensor [L, 2] or a list of (H, W) pairs, got {spatial_shapes!r}") from error


def _start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    areas = spatial_shapes.prod(1)
    return torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))


class MultiScaleDeformableAttnFunction:
    """mmcv's ``MultiScaleDeformableAttnFunction``: call :meth:`apply` as with mmcv.

    As in mmcv, ``sampling_locations`` and ``attention_weights`` are cast to value's dtype and the
    result has value's dtype, under autocast too (mmcv's kernel runs in the dtype of value; msda's
    op would otherwise run in fp32 under autocast). Differentiable w.r.t. value,
    sampling_locations and attention_weights.
    """

    @staticmethod
    def apply(
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int | torch.Tensor,
    ) -> torch.Tensor:
        """``value [B, S, M, D]``, shapes int64/int32 ``[L, 2]``, start index ``[L]``, locations
        ``[B, Q, M, L, P, 2]``, weights ``[B, Q, M, L, P]`` -> ``[B, Q, M*D]`` in value's dtype."""
        for name, tensor in (("value", value), ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if isinstance(im2col_step, torch.Tensor):
            if im2col_step.numel() != 1:
                raise ValueError(f"im2col_step must be an int or a one-element tensor, got shape {tuple(im2col_step.shape)}")
            im2col_step = int(im2col_step.item())
        locations = sampling_locations.type_as(value)
        weights = attention_weights.type_as(value)
        with _without_autocast(value.device):
            return ms_deform_attn(value, value_spatial_shapes, value_level_start_index, locations, weights, im2col_step)


def _pytorch_path_dtype(value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.dtype:
    """The dtype mmcv's grid_sample formulation returns: grid_sample's own (fp32 under CPU autocast,
    the wider of value and locations under CUDA autocast, value's outside autocast, where the two
    must match), then promoted with the weights it is multiplied by."""
    if autocast_active(value.device):
        sampled = torch.float32 if value.device.type == "cpu" else torch.promote_types(value.dtype, sampling_locations.dtype)
    else:
        if sampling_locations.dtype != value.dtype:
            raise TypeError(
                f"sampling_locations has dtype {sampling_locations.dtype} but value has {value.dtype}; "
                "outside autocast they must match (as for mmcv's grid_sample)"
            )
        sampled = value.dtype
    return torch.promote_types(sampled, attention_weights.dtype)


def multi_scale_deformable_attn_pytorch(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch``: no start index; the same numbers and dtype.

    ``value_spatial_shapes`` is an integer tensor ``[L, 2]`` (int64 or int32) or a list of (H, W).
    The output dtype follows mmcv's grid_sample formulation (see ``_pytorch_path_dtype``); the work
    is done by msda's op in that dtype.
    """
    for name, tensor in (("value", value), ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    shapes = _as_shapes(value, value_spatial_shapes)
    dtype = _pytorch_path_dtype(value, sampling_locations, attention_weights)
    with _without_autocast(value.device):
        return ms_deform_attn(value.to(dtype), shapes, _start_index(shapes), sampling_locations.to(dtype), attention_weights.to(dtype))
