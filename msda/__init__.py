"""Multi-scale deformable attention (MSDA) as a real torch op, for CPU and CUDA.

Public API:
    ms_deform_attn               the op (compiled kernel, or the reference as fallback)
    ms_deform_attn_reference     pure-PyTorch reference with the same signature
    MultiScaleDeformableAttention  the nn.Module of Deformable DETR
    active_implementation        which implementation serves a device, and why
"""

from msda.loader import Implementation, active_implementation
from msda.module import MultiScaleDeformableAttention
from msda.op import ms_deform_attn
from msda.reference import ms_deform_attn_reference

__all__ = [
    "Implementation",
    "MultiScaleDeformableAttention",
    "active_implementation",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
