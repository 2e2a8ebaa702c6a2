"""The embedded demo's dataset, model and training settings, and the demo itself.

The demo detector is small enough to train on a CPU: a ResNet-18 cut after its second stage
(stride 8, random initialisation: nothing is downloaded), two feature levels, a 64-wide transformer
with two encoder and two decoder layers, 20 queries, iterative box refinement and two-stage
proposals. ``models/cli/demo_checkpoint/`` holds one trained by ``deformable-detr train --preset demo``
(the exact commands are in ``docs/cli.md``); :func:`run_demo` evaluates it on freshly generated
held-out images, or trains a new one first with ``train=True``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from models.cli.detect import detect_images
from models.cli.errors import CliError, check_output_dir
from models.cli.loading import DEMO_CHECKPOINT_DIR, DEMO_CHECKPOINT_NAME, load_detector, resolve_device
from models.data.coco import CocoDetection
from models.data.synthetic import SyntheticSpec, write_synthetic_coco
from models.ddetr.config import DeformableDetrConfig
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.engine.training import MODEL_DIR, TrainingArgs, train

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

CHECKPOINT_DIR = DEMO_CHECKPOINT_DIR
"""The shipped demo detector (a Hugging Face-layout folder inside the installed package); ``--checkpoint demo`` names it."""

DEMO_TARGET_AP50 = 0.8


def run_demo(ns) -> int:
    """The ``demo`` command: data, detector, held-out evaluation, annotated detections. Returns the exit status.

    ``ns`` carries the command's options (``out``, ``train``, ``checkpoint``, ``num_images``,
    ``test_images``, ``threshold``, ``epochs``, ``device``).
    """
    started = time.time()
    out = Path(ns.out)
    data_dir = out / "data"
    test_images = DEMO_TEST_IMAGES if ns.test_images is None else int(ns.test_images)
    if test_images < 1:
        raise CliError(f"--test-images must be >= 1, got {test_images}")
    if ns.num_images < 0:
        raise CliError(f"--num-images must be >= 0, got {ns.num_images}")
    check_output_dir(out)  # before any data or model work
    splits = {DEMO_TEST_SPLIT: test_images}
    if ns.train:
        splits = {**DEMO_SPLITS, **splits}
    print(f"[1/4] synthetic data: {splits} -> {data_dir}")
    written = write_synthetic_coco(data_dir, splits, DEMO_SPEC, DEMO_DATA_SEED)

    if ns.train:
        values = dict(DEMO_TRAIN_ARGS)
        if ns.epochs is not None:
            values["epochs"] = ns.epochs
            values["lr_drop"] = max(1, round(ns.epochs * DEMO_TRAIN_ARGS["lr_drop"] / DEMO_TRAIN_ARGS["epochs"]))
        run_dir = out / "training"
        print(f"[2/4] training the demo detector ({values['epochs']} epochs) -> {run_dir}")
        train(TrainingArgs(data=str(data_dir), out=str(run_dir), **values), DeformableDetrConfig(**DEMO_MODEL_CONFIG))
        checkpoint = run_dir / MODEL_DIR
    else:
        checkpoint = Path(ns.checkpoint) if ns.checkpoint and ns.checkpoint != DEMO_CHECKPOINT_NAME else CHECKPOINT_DIR
        if not (checkpoint / "config.json").is_file() and not checkpoint.is_file():
            raise CliError(f"no demo checkpoint at {str(checkpoint)!r}; run 'deformable-detr demo --train' to train one")
        print(f"[2/4] detector: {checkpoint}")
    device = resolve_device(ns.device)
    model, processor = load_detector(str(checkpoint), None, device)

    images_dir, ann_file = written[DEMO_TEST_SPLIT]
    dataset = CocoDetection(images_dir, ann_file)
    print(f"[3/4] evaluating on {len(dataset)} held-out images (split {DEMO_TEST_SPLIT!r}, never used for training)")
    detections = predict_dataset(model, processor, dataset, batch_size=10, device=device)
    metrics, summary = coco_metrics(dataset.coco, detections)
    print(summary, end="")

    count = min(ns.num_images, len(dataset))
    paths = [str(dataset.image_path(i)) for i in range(count)]
    print(f"[4/4] drawing detections (score > {ns.threshold}) on {count} held-out images -> {out}")
    detect_images(model, processor, paths, out, ns.threshold, 100, device)

    elapsed = time.time() - started
    passed = metrics["AP50"] >= DEMO_TARGET_AP50
    write_metrics(
        out / "metrics.json",
        metrics,
        {
            "split": DEMO_TEST_SPLIT,
            "num_images": len(dataset),
            "checkpoint": str(checkpoint),
            "target_AP50": DEMO_TARGET_AP50,
            "passed": passed,
            "elapsed_s": round(elapsed, 1),
        },
    )
    verdict = "meets" if passed else "is BELOW"
    print(
        f"demo done in {elapsed:.0f} s: mAP@0.5 = {metrics['AP50']:.3f} ({verdict} the {DEMO_TARGET_AP50} target), "
        f"mAP@[.5:.95] = {metrics['AP']:.3f}; wrote {out / 'metrics.json'} and {count} PNG + JSON pairs"
    )
    return 0 if passed else 1
