"""The embedded demo: data, the shipped detector (or a new one), held-out COCO evaluation, pictures.

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

from models.cli.checks import check_nms
from models.cli.detect import detect_images
from models.cli.errors import CliError, RunStopped, check_output_dir
from models.cli.loading import DEMO_CHECKPOINT_DIR, DEMO_CHECKPOINT_NAME, load_detector, resolve_device
from models.cli.presets import (  # noqa: F401 - the settings live in a torch-free module (--help reads them); re-exported
    DEMO_DATA_SEED,
    DEMO_DINO_CONFIG,
    DEMO_MODEL_CONFIG,
    DEMO_NMS_IOU,
    DEMO_SPEC,
    DEMO_SPLITS,
    DEMO_TEST_IMAGES,
    DEMO_TEST_SPLIT,
    DEMO_TRAIN_ARGS,
)
from models.data.coco import CocoDetection
from models.data.synthetic import write_synthetic_coco
from models.ddetr.config import DeformableDetrConfig
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.engine.run_folder import OutputConflict
from models.engine.training import MODEL_DIR, TrainingArgs, TrainingDiverged, train

CHECKPOINT_DIR = DEMO_CHECKPOINT_DIR
"""The shipped demo detector (a Hugging Face-layout folder inside the installed package); ``--checkpoint demo`` names it."""

DEMO_TARGET_AP50 = 0.8


def run_demo(ns) -> int:
    """The ``demo`` command: data, detector, held-out evaluation, annotated detections. Returns the exit status.

    ``ns`` carries the command's options (``out``, ``train``, ``checkpoint``, ``num_images``,
    ``test_images``, ``threshold``, ``nms`` (an IoU, 0 or None for off; default ``DEMO_NMS_IOU``), ``epochs``, ``device``).
    """
    started = time.time()
    out = Path(ns.out)
    data_dir = out / "data"
    test_images = DEMO_TEST_IMAGES if ns.test_images is None else int(ns.test_images)
    if test_images < 1:
        raise CliError(f"--test-images must be >= 1, got {test_images}")
    if ns.num_images < 0:
        raise CliError(f"--num-images must be >= 0, got {ns.num_images}")
    nms = check_nms(getattr(ns, "nms", DEMO_NMS_IOU))
    if ns.train and ns.checkpoint:
        raise CliError(f"--train trains a new detector and --checkpoint {ns.checkpoint!r} names one to use: give one of them")
    for flag, value in (("--epochs", ns.epochs), ("--overwrite", getattr(ns, "overwrite", False) or None)):
        if value is not None and not ns.train:
            raise CliError(f"{flag} applies to the detector --train trains; without --train it would be ignored")
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
        run = TrainingArgs(data=str(data_dir), out=str(run_dir), overwrite=bool(getattr(ns, "overwrite", False)), **values)
        try:
            train(run, DeformableDetrConfig(**DEMO_MODEL_CONFIG))
        except OutputConflict as err:
            raise CliError(f"{err} (demo: --overwrite replaces the run in {str(run_dir)!r}, or choose another --out)") from None
        except TrainingDiverged as err:
            raise RunStopped(str(err)) from err
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
    nms_words = f"class-aware NMS at IoU {nms:g}" if nms is not None else "no NMS"
    print(f"[3/4] evaluating on {len(dataset)} held-out images (split {DEMO_TEST_SPLIT!r}, never used for training; {nms_words})")
    detections = predict_dataset(model, processor, dataset, batch_size=10, device=device, nms_threshold=nms)
    metrics, summary = coco_metrics(dataset.coco, detections)
    print(summary, end="")

    count = min(ns.num_images, len(dataset))
    paths = [str(dataset.image_path(i)) for i in range(count)]
    print(f"[4/4] drawing detections (score > {ns.threshold}) on {count} held-out images -> {out}")
    detect_images(model, processor, paths, out, ns.threshold, 100, device, nms_threshold=nms)

    elapsed = time.time() - started
    passed = metrics["AP50"] >= DEMO_TARGET_AP50
    write_metrics(
        out / "metrics.json",
        metrics,
        {
            "split": DEMO_TEST_SPLIT,
            "num_images": len(dataset),
            "checkpoint": str(checkpoint),
            "nms_threshold": nms,
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
