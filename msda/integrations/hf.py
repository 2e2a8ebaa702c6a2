"""Make a Hugging Face ``transformers`` model run its deformable attention on ``msda.ms_deform_attn``.

``enable(model)`` finds every place in ``model`` where a ``transformers`` model family samples its
multi-scale value, and points it at our op; ``disable(model)`` puts the original back. Parameters,
buffers and the ``state_dict`` are never touched, so weights load and save as before.

``transformers`` (checked against 4.57.6) does the sampling in one of three ways:

1. A parameter-free kernel module named ``MultiScaleDeformableAttention`` whose forward takes
   ``(value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
   sampling_locations, attention_weights, im2col_step)``, held as a child (usually ``attn``) of
   the attention layer: Deformable DETR, Grounding DINO, MM Grounding DINO, OmDet-Turbo, RT-DETR.
   We replace that child with :class:`MsdaKernel`, which remembers the original.
2. A module-level function called from the attention layer's ``forward``:
   ``multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations,
   attention_weights)`` (Mask2Former, OneFormer, DETA; DETA also tries
   ``MultiScaleDeformableAttentionFunction.apply``) and ``multi_scale_deformable_attention_v2(...,
   num_points_list, method)`` (RT-DETR v2). A function's global names cannot be changed for one
   model only, so the layer instance gets its own ``forward``: the class's code object bound to a
   copy of its module globals in which those names mean our stand-ins. The class, the module and
   other models stay untouched; ``disable`` deletes the instance attribute.
3. An instance attribute ``ms_deformable_attn_core`` holding the v2 function (D-FINE); we set the
   attribute to a stand-in and restore it on ``disable``.

Things the op cannot do are passed through to the original: the v2 ``"discrete"`` sampling
method. Levels with different numbers of points (D-FINE's ``decoder_n_points`` list) are padded
to the largest count with zero-weight points, which adds nothing to the sum.

An enabled model can be deep-copied and pickled (``torch.save(model)``); the copy stays enabled.

``transformers`` is imported lazily, only to recognise its classes: importing this module does not
need it.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from msda.op import ms_deform_attn
from msda.validation import autocast_active

__all__ = ["MsdaKernel", "enable", "disable", "swapped_modules"]

# Argument names our stand-ins accept, per name they replace. A transformers version whose
# functions take other arguments is left alone (with a warning) rather than guessed at.
_KERNEL_MODULE_ARGS = (
    "value",
    "value_spatial_shapes",
    "value_spatial_shapes_list",
    "level_start_index",
    "sampling_locations",
    "attention_weights",
    "im2col_step",
)
_FUNCTION_ARGS = {
    "multi_scale_deformable_attention": ("value", "value_spatial_shapes", "sampling_locations", "attention_weights"),
    "multi_scale_deformable_attention_v2": (
        "value",
        "value_spatial_shapes",
        "sampling_locations",
        "attention_weights",
        "num_points_list",
        "method",
    ),
}
_ATTRIBUTE_FUNCTIONS = {"ms_deformable_attn_core": "multi_scale_deformable_attention_v2"}
_AUTOGRAD_FUNCTION_NAME = "MultiScaleDeformableAttentionFunction"


# --------------------------------------------------------------------------------------------
# Stand-ins: same call signature as what they replace, computed by msda.ms_deform_attn
# --------------------------------------------------------------------------------------------


def _shapes_and_starts(spatial_shapes: torch.Tensor | Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) per level as int64 ``[L, 2]`` on ``device``, and each level's offset ``[L]``."""
    shapes = torch.as_tensor(spatial_shapes, dtype=torch.int64, device=device).reshape(-1, 2)
    starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    return shapes, starts


def _attend(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """``ms_deform_attn`` after lining up dtypes the way transformers' grid_sample path tolerates."""
    if not autocast_active(value.device):
        # transformers mixes dtypes freely (e.g. fp32 reference points with a bf16 model);
        # grid_sample computes in the value's dtype, so do the same
        sampling_locations = sampling_locations.to(value.dtype)
        attention_weights = attention_weights.to(value.dtype)
    return ms_deform_attn(
        value,
        spatial_shapes.to(torch.int64),
        level_start_index.to(torch.int64),
        sampling_locations,
        attention_weights,
        int(im2col_step) if im2col_step else 64,
    )


class MsdaKernel(nn.Module):
    """Stands in for a ``transformers`` ``MultiScaleDeformableAttention`` kernel module.

    Holds no parameters; keeps the module it replaced (unregistered, so it is not part of
    ``modules()`` or the ``state_dict``) for :func:`disable`.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        if not isinstance(original, nn.Module):
            raise TypeError(f"original must be an nn.Module, got {type(original).__name__}")
        object.__setattr__(self, "_original", original)

    @property
    def original(self) -> nn.Module:
        """The transformers module this one replaced."""
        return self._original

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: Sequence[Sequence[int]] | None,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int = 64,
    ) -> torch.Tensor:
        """Args as transformers passes them: value ``[B, S, M, D]``, value_spatial_shapes int
        ``[L, 2]``, value_spatial_shapes_list the same as Python pairs (unused here),
        level_start_index ``[L]``, sampling_locations ``[B, Q, M, L, P, 2]``, attention_weights
        ``[B, Q, M, L, P]``. Returns ``[B, Q, M*D]``."""
        if level_start_index is None:
            value_spatial_shapes, level_start_index = _shapes_and_starts(value_spatial_shapes, value.device)
        return _attend(value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)

    def extra_repr(self) -> str:
        return f"replaces={type(self._original).__module__}.{type(self._original).__qualname__}"


class _V1StandIn:
    """Replaces ``multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations,
    attention_weights)``: value ``[B, S, M, D]``, shapes as a tensor or a list of (H, W),
    locations ``[B, Q, M, L, P, 2]``, weights ``[B, Q, M, L, P]`` -> ``[B, Q, M*D]``."""

    def __init__(self, original: Callable) -> None:
        self.original = original

    def __call__(self, value, value_spatial_shapes, sampling_locations, attention_weights) -> torch.Tensor:
        shapes, starts = _shapes_and_starts(value_spatial_shapes, value.device)
        return _attend(value, shapes, starts, sampling_locations, attention_weights)


class _V2StandIn:
    """Replaces ``multi_scale_deformable_attention_v2(value, value_spatial_shapes,
    sampling_locations, attention_weights, num_points_list, method)``, where the points of all
    levels are concatenated: locations ``[B, Q, M, ΣP_l, 2]``, weights ``[B, Q, M, ΣP_l]``."""

    def __init__(self, original: Callable) -> None:
        self.original = original

    def __call__(self, value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list, method="default"):
        if method != "default":
            # "discrete" rounds to the nearest pixel instead of interpolating: not our op
            return self.original(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list, method)
        shapes, starts = _shapes_and_starts(value_spatial_shapes, value.device)
        batch, queries, heads = sampling_locations.shape[:3]
        levels, most = len(num_points_list), max(num_points_list)
        if all(points == most for points in num_points_list):
            locations = sampling_locations.reshape(batch, queries, heads, levels, most, 2)
            weights = attention_weights.reshape(batch, queries, heads, levels, most)
        else:
            # pad every level to the largest point count; padded points weigh zero
            locations = sampling_locations.new_zeros(batch, queries, heads, levels, most, 2)
            weights = attention_weights.new_zeros(batch, queries, heads, levels, most)
            for level, (level_locations, level_weights) in enumerate(
                zip(sampling_locations.split(num_points_list, dim=3), attention_weights.split(num_points_list, dim=3))
            ):
                count = num_points_list[level]
                locations[:, :, :, level, :count] = level_locations
                weights[:, :, :, level, :count] = level_weights
        return _attend(value, shapes, starts, locations, weights)


class _AutogradFunctionStandIn:
    """Replaces a custom ``torch.autograd.Function`` called as ``.apply(value, spatial_shapes,
    level_start_index, sampling_locations, attention_weights, im2col_step)`` (DETA)."""

    def __init__(self, original: object) -> None:
        self.original = original

    def apply(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step=64):
        return _attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)


# --------------------------------------------------------------------------------------------
# Finding what to swap
# --------------------------------------------------------------------------------------------


def _is_transformers_class(cls: type) -> bool:
    return cls.__module__.startswith("transformers.")


def _argument_names(function: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return ()


def _is_kernel_module(module: nn.Module) -> bool:
    cls = type(module)
    if cls.__name__ != "MultiScaleDeformableAttention" or not _is_transformers_class(cls):
        return False
    return _argument_names(module.forward) == _KERNEL_MODULE_ARGS


def _stand_ins_for_globals(forward: Callable) -> dict[str, object]:
    """Global names that ``forward`` reads and that we know how to replace, with their stand-ins."""
    code = getattr(forward, "__code__", None)
    if code is None:
        return {}
    found: dict[str, object] = {}
    for name in code.co_names:
        if name not in forward.__globals__:
            continue
        original = forward.__globals__[name]
        if name in _FUNCTION_ARGS:
            if _argument_names(original) != _FUNCTION_ARGS[name]:
                warnings.warn(f"msda: {forward.__qualname__} calls {name} with an unknown signature; left unchanged", stacklevel=4)
                continue
            found[name] = _V1StandIn(original) if name == "multi_scale_deformable_attention" else _V2StandIn(original)
        elif name == _AUTOGRAD_FUNCTION_NAME and hasattr(original, "apply"):
            found[name] = _AutogradFunctionStandIn(original)
    # only an autograd function without its grid_sample fallback would be a half swap
    return found if any(name in _FUNCTION_ARGS for name in found) else {}


_patched_forwards: dict[type, Callable | None] = {}


def _patched_forward(cls: type) -> Callable | None:
    """The class's ``forward`` code bound to globals that name our stand-ins (cached per class)."""
    if cls not in _patched_forwards:
        forward = cls.forward
        # judged by where forward is defined, so user subclasses of transformers layers count
        from_transformers = str(getattr(forward, "__module__", "")).startswith("transformers.")
        stand_ins = _stand_ins_for_globals(forward) if from_transformers else {}
        if not stand_ins:
            _patched_forwards[cls] = None
        else:
            namespace = dict(forward.__globals__)
            namespace.update(stand_ins)
            patched = types.FunctionType(forward.__code__, namespace, forward.__name__, forward.__defaults__, forward.__closure__)
            patched.__kwdefaults__ = forward.__kwdefaults__
            patched.__qualname__ = forward.__qualname__
            patched.__doc__ = forward.__doc__
            _patched_forwards[cls] = patched
    return _patched_forwards[cls]


class _RoutedForward:
    """A layer's instance-level ``forward``: its class's forward code run with globals that name
    our stand-ins. A callable object rather than a bound method so that pickling the model keeps
    the swap (a bound method would be pickled as "look up ``forward`` again" and lose it)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args, **kwargs):
        return _patched_forward(type(self.module))(self.module, *args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(type(self.module).forward.__get__(self.module))

    def __reduce__(self):
        return (_RoutedForward, (self.module,))


def _has_patched_forward(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), _RoutedForward)


def _swappable_attribute(module: nn.Module) -> str | None:
    for attribute, function_name in _ATTRIBUTE_FUNCTIONS.items():
        current = module.__dict__.get(attribute)
        if current is None or isinstance(current, _V2StandIn) or not _is_transformers_class(type(module)):
            continue
        if _argument_names(current) == _FUNCTION_ARGS[function_name]:
            return attribute
    return None


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a transformers model), got {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def enable(model: nn.Module) -> nn.Module:
    """Make ``model`` compute its multi-scale deformable attention with ``msda.ms_deform_attn``.

    Works on any ``transformers`` model containing one of the layouts described in this module's
    docstring (Deformable DETR, Grounding DINO, MM Grounding DINO, OmDet-Turbo, RT-DETR,
    RT-DETR v2, D-FINE, Mask2Former, OneFormer, DETA), including a bare attention layer. Calling it
    twice is harmless. Warns when nothing was found.

    Args:
        model: a ``torch.nn.Module``, changed in place.

    Returns:
        ``model`` itself, so ``model = enable(Model(config))`` reads naturally.
    """
    _check_model(model)
    import transformers  # noqa: F401 - fail early and clearly when it is missing

    changed = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if _is_kernel_module(child):
                setattr(parent, child_name, MsdaKernel(child))
                changed += 1
        if not _has_patched_forward(parent):
            if _patched_forward(type(parent)) is not None:
                parent.forward = _RoutedForward(parent)
                changed += 1
        attribute = _swappable_attribute(parent)
        if attribute is not None:
            setattr(parent, attribute, _V2StandIn(getattr(parent, attribute)))
            changed += 1
    if _is_kernel_module(model):
        warnings.warn("msda: model is itself a kernel module; enable() its parent instead", stacklevel=2)
    elif changed == 0 and not swapped_modules(model):
        warnings.warn(f"msda: found no multi-scale deformable attention to swap in {type(model).__name__}", stacklevel=2)
    return model


def disable(model: nn.Module) -> nn.Module:
    """Undo :func:`enable`: every swapped place calls transformers' own code again.

    Args:
        model: a ``torch.nn.Module``, changed in place; one never enabled is returned unchanged.

    Returns:
        ``model`` itself.
    """
    _check_model(model)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, MsdaKernel):
                setattr(parent, child_name, child.original)
        if _has_patched_forward(parent):
            del parent.forward
        for attribute in _ATTRIBUTE_FUNCTIONS:
            current = parent.__dict__.get(attribute)
            if isinstance(current, _V2StandIn):
                setattr(parent, attribute, current.original)
    return model


def swapped_modules(model: nn.Module) -> list[str]:
    """Qualified names (as in ``model.named_modules()``) of the places now served by our op."""
    _check_model(model)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, MsdaKernel) or _has_patched_forward(module):
            names.append(name)
        elif any(isinstance(module.__dict__.get(attribute), _V2StandIn) for attribute in _ATTRIBUTE_FUNCTIONS):
            names.append(name)
    return names
