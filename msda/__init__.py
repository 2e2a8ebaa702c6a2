"""Multi-scale deformable attention (MSDA) as a real torch op, for CPU and CUDA.

Public API:
    ms_deform_attn               the op (compiled kernel, or the reference as fallback)
    ms_deform_attn_reference     pure-PyTorch reference with the same signature
    MultiScaleDeformableAttention  the nn.Module of Deformable DETR
    active_implementation        which implementation serves a device, and why
"""

from msda import environment as _environment
from msda import loader as _loader
from msda import registration as _registration
from msda.loader import Implementation, active_implementation
from msda.module import MultiScaleDeformableAttention
from msda.op import ms_deform_attn
from msda.reference import ms_deform_attn_reference

# A verified cached build is loaded now (it defines the ops); then Python defines whatever is still
# missing and attaches fake kernels, autograd, autocast and the build-on-first-call fallback.
_environment.check_all()  # a bad MSDA_* value raises here, naming the variable and its valid values
_loader.load_cached()
_registration.register()

__all__ = [
    "Implementation",
    "MultiScaleDeformableAttention",
    "active_implementation",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
