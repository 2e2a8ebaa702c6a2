"""``sincos_2d_position_embedding``: the fixed 2-D sin-cos table RT-DETR's AIFI adds to queries and keys.

With ``F = dim / 4`` frequencies ``ω_d = temperature^(-d / F)`` (d = 0 … F−1), the position ``(i, j)``
(i a width index in [0, W), j a height index in [0, H)) gets the ``dim`` channels

    ``[sin(i·ω), cos(i·ω), sin(j·ω), cos(j·ω)]``            (four blocks of F channels each).

Row order. The table enumerates positions with the width index outermost, ``k = i·H + j``: the order
of the RT-DETR authors' code, which its checkpoints were trained with. AIFI adds row ``k`` to the
``k``-th pixel of the feature map flattened row-major over (H, W), so on a square map the first
2F channels follow the pixel's row and the last 2F its column; on a non-square map the two
enumerations differ and the embedding is a fixed, still injective, relabelling of the pixels.
"""

from __future__ import annotations

import torch


def sincos_2d_position_embedding(
    width: int,
    height: int,
    dim: int = 256,
    temperature: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The 2-D sin-cos table of a ``height × width`` map (see the module docstring for the layout).

    Args:
        width: W, a positive int.
        height: H, a positive int.
        dim: C, the channel count, divisible by 4. (Each may also be a 0-dim integer tensor, as
            tracing gives sizes; it is read as its value.)
        temperature: base of the frequencies, positive.
        dtype, device: of the result (computed in ``dtype``, as the reference does).

    Returns:
        ``[W·H, C]``, row ``k = i·H + j`` for width index i and height index j.
    """
    # ONNX's TorchScript exporter traces sizes as 0-dim tensors: they become constants of the graph
    width, height, dim = (int(v) if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() else v for v in (width, height, dim))
    for name, value in (("width", width), ("height", height), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (sin and cos of two axes), got {dim}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    frequencies = dim // 4
    omega = temperature ** -(torch.arange(frequencies, device=device).to(dtype) / frequencies)
    grid_i, grid_j = torch.meshgrid(
        torch.arange(width, device=device).to(dtype), torch.arange(height, device=device).to(dtype), indexing="ij"
    )
    angle_i = grid_i.reshape(-1, 1) * omega
    angle_j = grid_j.reshape(-1, 1) * omega
    return torch.cat([angle_i.sin(), angle_i.cos(), angle_j.sin(), angle_j.cos()], dim=1)
