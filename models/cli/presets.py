"""The embedded demo's settings: its synthetic images, splits, model and training recipe.

Plain values with no torch import, so that ``deformable-detr --help`` (whose ``--preset demo`` help
is written from them) answers without loading torch. :mod:`models.cli.demo` runs the demo with them.
"""

from __future__ import annotations

from typing import Any

from models.data.synthetic_spec import SyntheticSpec

DEMO_SPEC = SyntheticSpec(
    image_size=(64, 64),
    classes=("circle", "square", "triangle"),
    min_objects=1,
    max_objects=3,
    min_size=0.25,
    max_size=0.55,
    max_iou=0.2,
)
"""What the demo's images look like: 64x64, 1-3 shapes of three classes on textured backgrounds."""

DEMO_DATA_SEED = 0
DEMO_SPLITS = {"train": 2000, "val": 100}
DEMO_TEST_SPLIT = "test"
DEMO_TEST_IMAGES = 100
"""The demo scores the detector on a ``test`` split that no training run ever reads."""

DEMO_MODEL_CONFIG: dict[str, Any] = {
    "backbone": "resnet18",
    "use_pretrained_backbone": False,
    "backbone_kwargs": {"out_indices": [2], "in_chans": 3},
    "num_feature_levels": 2,
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "num_queries": 20,
    "two_stage_num_proposals": 20,
    "with_box_refine": True,
    "two_stage": True,
    "dropout": 0.0,
}
"""``DeformableDetrConfig`` fields of the demo detector (the rest keep their defaults)."""

DEMO_DINO_CONFIG: dict[str, Any] = {
    **{key: value for key, value in DEMO_MODEL_CONFIG.items() if key not in ("backbone_kwargs", "two_stage_num_proposals", "with_box_refine", "two_stage")},
    "backbone_out_indices": DEMO_MODEL_CONFIG["backbone_kwargs"]["out_indices"],
    "dn_number": 20,
}
"""``DinoConfig`` fields of ``train --model dino --preset demo``: the demo detector's backbone and
widths, with DINO's denoising (20 queries before grouping), mixed query selection and
look-forward-twice."""

DEMO_RT_DETR_CONFIG: dict[str, Any] = {
    "backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 96, 128], "depths": [1, 1, 1, 1],
                        "layer_type": "basic", "out_indices": [2, 3, 4]},
    "encoder_in_channels": [64, 96, 128],
    "encoder_hidden_dim": 64,
    "encoder_ffn_dim": 128,
    "encoder_attention_heads": 4,
    "hidden_expansion": 0.5,
    "d_model": 64,
    "decoder_in_channels": [64, 64, 64],
    "decoder_layers": 2,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 128,
    "num_queries": 20,
    "num_denoising": 20,
}
"""``RTDetrConfig`` fields of ``train --model rt-detr --preset demo``: a basic-block ResNet-vd of one block
per stage (strides 8, 16, 32: 8x8 to 2x2 maps of the 64-pixel images), the hybrid encoder and decoder at
the demo detector's width, 20 queries and 20 denoising queries."""

DEMO_CONFIGS: dict[str, dict[str, Any]] = {"dino": DEMO_DINO_CONFIG, "rt-detr": DEMO_RT_DETR_CONFIG}
"""``--preset demo``'s model per ``--model`` family whose config is not Deformable DETR's
(every other family takes ``DEMO_MODEL_CONFIG``)."""

DEMO_TRAIN_ARGS: dict[str, Any] = {
    "epochs": 30,
    "lr_drop": 24,
    "lr": 4e-4,
    "lr_backbone": 4e-4,
    "train_backbone_stem": True,
    "batch_size": 8,
    "eval_batch_size": 10,
    "num_workers": 1,
    "image_size": 64,
    "max_size": 64,
    "multiscale": False,
    "seed": 42,
}
"""``TrainingArgs`` fields of the demo recipe: the paper's optimizer, gradient clipping and step decay
at 64-pixel images with flips only (no multi-scale resize or crop, which would shrink the shapes to a
few pixels); because the whole network starts from random weights, the backbone (stem and first stage
included) trains at the same rate as the rest, and the rate is 4e-4 for this small model and batch."""

DEMO_NMS_IOU = 0.7
"""IoU of the class-aware NMS that ``demo`` applies by default (``--nms 0`` turns it off): on the 100
held-out images it removes the near-duplicate boxes and raises AP (``benchmarks/bench_demo_nms.py``)."""
