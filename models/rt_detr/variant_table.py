"""RT-DETR's published sizes (``PekingU/rtdetr_r18vd`` … ``r101vd``) as config fields over
``RTDetrConfig``'s defaults (R50-vd), with no model imports (so that the command line can list them
without importing torch)."""

from __future__ import annotations

from typing import Any


def _resnet_vd(depths: list[int], layer_type: str) -> dict[str, Any]:
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    return {"model_type": "rt_detr_resnet", "depths": depths, "layer_type": layer_type, "hidden_sizes": widths, "embedding_size": 64, "out_indices": [2, 3, 4]}


# R18/R34: basic blocks, CCFM at half width, 3 or 4 decoder layers; R101: a wider hybrid encoder.
RT_DETR_VARIANTS: dict[str, dict[str, Any]] = {
    "r18vd": {"backbone_config": _resnet_vd([2, 2, 2, 2], "basic"), "encoder_in_channels": [128, 256, 512], "hidden_expansion": 0.5, "decoder_layers": 3},
    "r34vd": {"backbone_config": _resnet_vd([3, 4, 6, 3], "basic"), "encoder_in_channels": [128, 256, 512], "hidden_expansion": 0.5, "decoder_layers": 4},
    "r50vd": {},
    "r101vd": {
        "backbone_config": _resnet_vd([3, 4, 23, 3], "bottleneck"), "encoder_hidden_dim": 384, "encoder_ffn_dim": 2048,
        "decoder_in_channels": [384, 384, 384],
    },
}
