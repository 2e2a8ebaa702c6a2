"""A drop-in for mmcv's / detrex's ``MultiScaleDeformableAttention`` built on msda's module.

mmcv (``mmcv.ops.MultiScaleDeformableAttention``, used by MMDetection) and detrex
(``detrex.layers.MultiScaleDeformableAttention``) wrap the same attention in the same way: the
layer takes sequence-first tensors unless ``batch_first=True``, adds ``query_pos`` to the query,
and returns ``identity + dropout(attention)``. Their parameters are named like ours
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``), so their
checkpoints load into this class unchanged.

    from msda.integrations.mmcv import MultiScaleDeformableAttention
    layer = MultiScaleDeformableAttention(embed_dims=256, num_levels=4, batch_first=True)

mmcv's function-level names, ``MultiScaleDeformableAttnFunction`` and
``multi_scale_deformable_attn_pytorch``, are here too (from :mod:`msda.integrations.mmcv_functions`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from msda.integrations.mmcv_functions import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch
from msda.module import MultiScaleDeformableAttention as _MsdaAttention
from msda.validation import autocast_active

__all__ = ["MultiScaleDeformableAttention", "MultiScaleDeformableAttnFunction", "multi_scale_deformable_attn_pytorch"]


class MultiScaleDeformableAttention(_MsdaAttention):
    """mmcv/detrex-compatible multi-scale deformable attention with residual and dropout.

    Args:
        embed_dims: model width C (mmcv's name; ``embed_dim=`` is accepted as detrex's name);
            must be divisible by ``num_heads`` (``ValueError`` otherwise, as in mmcv).
        num_heads, num_levels, num_points: M, L, P.
        im2col_step: passed to the op (``img2col_step=`` is accepted as detrex's name).
        dropout: dropout applied to the attention output before the residual add.
        batch_first: ``True`` for ``[B, N, C]`` query/value/identity, ``False`` (the mmcv and
            detrex default) for ``[N, B, C]``.
        value_proj_ratio: ``value_proj`` maps to ``int(embed_dims * value_proj_ratio)`` channels
            and ``output_proj`` maps them back, as in mmcv (so its checkpoints load).
        norm_cfg, init_cfg: accepted for signature compatibility with mmcv and ignored (mmcv
            ignores ``norm_cfg`` too; initialisation is always the paper's, see
            :meth:`init_weights`).

    Parameters (as in mmcv): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``.
    """

    def __init__(
        self,
        embed_dims: int | None = None,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        im2col_step: int | None = None,
        dropout: float = 0.1,
        batch_first: bool = False,
        norm_cfg: dict | None = None,
        init_cfg: dict | None = None,
        value_proj_ratio: float = 1.0,
        *,
        embed_dim: int | None = None,
        img2col_step: int | None = None,
    ) -> None:
        if embed_dims is not None and embed_dim is not None and embed_dims != embed_dim:
            raise ValueError(f"embed_dims ({embed_dims}) and embed_dim ({embed_dim}) disagree; pass one of them")
        if im2col_step is not None and img2col_step is not None and im2col_step != img2col_step:
            raise ValueError(f"im2col_step ({im2col_step}) and img2col_step ({img2col_step}) disagree; pass one of them")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {type(batch_first).__name__}")
        width = embed_dims if embed_dims is not None else (embed_dim if embed_dim is not None else 256)
        step = im2col_step if im2col_step is not None else (img2col_step if img2col_step is not None else 64)
        super().__init__(
            embed_dim=width, num_heads=num_heads, num_levels=num_levels, num_points=num_points, im2col_step=step, value_proj_ratio=value_proj_ratio
        )
        self.value_proj_ratio = value_proj_ratio
        self.embed_dims = width
        self.norm_cfg = norm_cfg
        self.batch_first = batch_first
        self.dropout = nn.Dropout(dropout)

    def init_weights(self) -> None:
        """mmcv's name for the paper's initialisation (:meth:`reset_parameters`)."""
        self.reset_parameters()

    def _attend(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        """The attention as mmcv computes it, dtype included: its CUDA path (and any path outside
        autocast) runs in value's dtype; its CPU path under autocast returns grid_sample's fp32."""
        if value.device.type == "cuda" or not autocast_active(value.device):
            return MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, self.im2col_step)
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        identity: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        reference_points: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        level_start_index: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``identity + dropout(output_proj(attention))``, in the layout of ``query``.

        Args:
            query: ``[Q, B, C]`` (``[B, Q, C]`` when ``batch_first``).
            key: unused (the keys are the sampling points), accepted like mmcv.
            value: ``[S, B, C]`` (``[B, S, C]`` when ``batch_first``); ``None`` means ``query``.
            identity: added to the output, same layout as ``query``; ``None`` means ``query``
                (before ``query_pos`` is added).
            query_pos: added to ``query`` before the offsets and weights are computed.
            key_padding_mask: bool ``[B, S]``, True at padded value positions (zeroed).
            reference_points: ``[B, Q, L, 2]`` points or ``[B, Q, L, 4]`` boxes, normalized,
                always batch-first (as in mmcv).
            spatial_shapes: int64 or int32 ``[L, 2]`` (H, W); level_start_index: ``[L]``, int64
                or int32 (computed from spatial_shapes when ``None``).
            **kwargs: ignored, as mmcv ignores extra keys its transformer layers pass; the
                old name ``residual=`` for ``identity`` is honoured with a warning, as in mmcv.

        Returns:
            Same shape as ``query``.
        """
        if reference_points is None or spatial_shapes is None:
            raise ValueError("reference_points and spatial_shapes are required (got None)")
        if "residual" in kwargs:
            residual = kwargs.pop("residual")
            warnings.warn("the argument 'residual' is deprecated in mmcv's MultiScaleDeformableAttention; use 'identity'", DeprecationWarning, stacklevel=2)
            if identity is None:
                identity = residual
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            if query_pos.shape != query.shape:
                raise ValueError(f"query_pos must have the shape of query {tuple(query.shape)}, got {tuple(query_pos.shape)}")
            query = query + query_pos
        if level_start_index is None:
            level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        output = super().forward(query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask=key_padding_mask)
        if not self.batch_first:
            output = output.transpose(0, 1)
        if identity.shape != output.shape:
            raise ValueError(f"identity must have the shape of query {tuple(output.shape)}, got {tuple(identity.shape)}")
        return identity + self.dropout(output)
