"""The commands of ``deformable-detr``: one function per command, taking the parsed arguments.

This module imports torch and the models; :mod:`models.cli.main` imports it only after the arguments
have been parsed and checked (so ``--help`` and argument errors stay fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from models.cli.checks import check_nms
from models.cli.demo import run_demo
from models.cli.detect import check_detect_inputs, detect_images
from models.cli.errors import CliError, Interrupted, RunStopped, check_output_dir, is_user_os_error, read_json_file
from models.cli.loading import check_eval_dataset, interrupted_training_message, load_detector, model_family, model_overrides, read_config_file, resolve_device
from models.cli.outputs import claimed_output
from models.cli.presets import DEMO_CONFIGS, DEMO_DATA_SEED, DEMO_MODEL_CONFIG, DEMO_SPEC, DEMO_SPLITS, DEMO_TRAIN_ARGS
from models.data.coco import CocoDetection, resolve_split
from models.data.synthetic import SyntheticSpec, write_synthetic_coco
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.engine.progress import progress_iterable
from models.engine.run_folder import DATASET_FILES, OutputConflict, check_apart_from_inputs, dataset_tree, move_aside
from models.engine.training import TrainingArgs, TrainingDiverged, naming_write_errors, train
from models.registry import family

# command-line flag -> TrainingArgs field
_TRAIN_FLAGS = (
    "epochs", "lr_drop", "lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "clip_max_norm", "batch_size",
    "eval_batch_size", "num_workers", "seed", "image_size", "max_size", "flip", "multiscale", "amp", "device", "resume",
    "eval_every", "max_steps_per_epoch", "train_split", "val_split", "progress", "train_backbone_stem",
    "find_unused_parameters", "allow_change", "overwrite",
)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise CliError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------------- commands
def cmd_detect(ns: argparse.Namespace) -> int:
    paths = check_detect_inputs(ns.images, ns.threshold, ns.top_k, ns.batch_size)  # before the model is loaded
    with claimed_output(ns.out, "detect", images=paths, checkpoint=ns.checkpoint) as out:
        device = resolve_device(ns.device)
        model, processor = load_detector(ns.checkpoint, ns, device)
        results = detect_images(model, processor, paths, out, ns.threshold, ns.top_k, device, batch_size=ns.batch_size,
                                nms_threshold=check_nms(ns.nms))
    total = sum(r.count for r in results)
    print(f"{len(results)} image(s), {total} detection(s); wrote {len(results)} annotated PNG + JSON pair(s) to {out}")
    return 0


def build_train_setup(ns: argparse.Namespace):
    """(TrainingArgs, config) from the train command's flags, preset and model family (``--model``).

    The config's classes are a placeholder: ``train`` sets the dataset's before it checks the config
    again. Explicit settings win over the preset's (flags over ``--config`` over the preset)."""
    chosen = family(model_family(ns))
    train_values = dict(DEMO_TRAIN_ARGS) if ns.preset == "demo" else dict(chosen.recipe)
    for name in _TRAIN_FLAGS:
        value = getattr(ns, name, None)
        if value is not None:
            train_values[name] = tuple(value) if isinstance(value, list) else value
    args = TrainingArgs(data=ns.data, out=ns.out, model=chosen.name, **train_values)
    try:
        args.validate()
    except ValueError as err:
        raise CliError(str(err)) from err

    # lowest first: the preset's model, the family's own fields, the --config file, the flags
    base: dict = {"use_pretrained_backbone": False}
    if ns.preset == "demo":
        base.update(DEMO_CONFIGS.get(chosen.name, DEMO_MODEL_CONFIG))
    base.update(chosen.defaults)
    if ns.config:
        base.update(read_config_file(ns.config, config_class=chosen.config_class))
    base.update(model_overrides(ns))
    base.setdefault("use_pretrained_backbone", False)
    if "num_labels" not in base and "id2label" not in base:
        base["num_labels"] = 1  # train() sets the dataset's classes; until then no setting is checked against 91 classes
    try:
        config = chosen.config_class.from_dict(base)
    except (ValueError, TypeError) as err:
        raise CliError(f"model config: {err}") from err
    preset_backbone = DEMO_MODEL_CONFIG["backbone"] if ns.preset == "demo" else None
    if config.backbone != preset_backbone and not ns.resume and not config.use_pretrained_backbone and str(config.backbone).startswith("resnet"):
        warnings.warn(
            f"the {config.backbone} backbone starts from random weights (no --pretrained-backbone): the paper's recipe "
            "assumes ImageNet weights and needs many more epochs without them; add --pretrained-backbone "
            "(ImageNet weights from the local torch cache), or use --preset demo for small images on a CPU",
            UserWarning,
            stacklevel=2,
        )
    return args, config


def cmd_train(ns: argparse.Namespace) -> int:

    _set_threads(ns.threads)
    args, config = build_train_setup(ns)
    if ns.resume and not ns.config and not model_overrides(ns):
        config = None  # no model flags on the command line: continue with the checkpoint's own model
    try:
        check_apart_from_inputs(args.out, read_trees=[dataset_tree(args.data)])  # before check_output_dir creates it
    except OutputConflict as err:
        raise CliError(str(err)) from None
    check_output_dir(args.out)
    started = time.time()
    try:
        result = train(args, config)
    except TrainingDiverged as err:
        raise RunStopped(str(err)) from err
    except KeyboardInterrupt as err:
        raise Interrupted(interrupted_training_message(args.out)) from err
    except (FileNotFoundError, ValueError) as err:
        if is_user_os_error(err) and getattr(err, "filename", None):
            raise
        raise CliError(str(err)) from err
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result.get("rank", 0) == 0:
        minutes = (time.time() - started) / 60
        print(f"training done in {minutes:.1f} min: {result['epoch']} epochs, {result['step']} steps; model in {Path(args.out) / 'model'}")
        if result.get("metrics"):
            m = result["metrics"]
            print(f"last evaluation: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:

    if (ns.checkpoint is None) == (ns.predictions is None):
        raise CliError("eval needs exactly one of --checkpoint and --predictions")
    try:
        images_dir, ann_file = resolve_split(ns.data, ns.split)
        dataset = CocoDetection(images_dir, ann_file)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    check_eval_dataset(dataset, ns.split)
    predictions = [("the --predictions file", ns.predictions)] if ns.predictions else []
    with claimed_output(ns.out, "eval", checkpoint=ns.checkpoint, data=ns.data, read_files=predictions,
                        writes=("metrics.json",) if ns.predictions else ("metrics.json", "detections.json")) as out:  # before any prediction
        extra = {"split": ns.split, "annotations": str(ann_file), "num_images": len(dataset)}
        if ns.predictions:
            detections = read_json_file(ns.predictions, "--predictions", list, "a JSON list of COCO result records")
            try:
                metrics, summary = coco_metrics(dataset.coco, detections)
            except ValueError as err:
                raise CliError(str(err)) from err
            extra["predictions"] = ns.predictions
        else:
            device = resolve_device(ns.device)
            model, processor = load_detector(ns.checkpoint, ns, device)
            if model.config.num_labels != dataset.num_classes:
                raise CliError(
                    f"--checkpoint {ns.checkpoint!r} predicts {model.config.num_labels} classes but {str(ann_file)!r} "
                    f"has {dataset.num_classes} categories"
                )
            try:
                detections = predict_dataset(model, processor, dataset, batch_size=ns.batch_size, device=device,
                                             progress=lambda it: progress_iterable(it, "eval"), nms_threshold=check_nms(ns.nms))
            except (FileNotFoundError, ValueError) as err:
                if is_user_os_error(err) and getattr(err, "filename", None):
                    raise
                raise CliError(str(err)) from err
            metrics, summary = coco_metrics(dataset.coco, detections)
            extra["checkpoint"] = ns.checkpoint
            extra["nms_threshold"] = check_nms(ns.nms)
            with naming_write_errors(out / "detections.json"):
                (out / "detections.json").write_text(json.dumps(detections))
        write_metrics(out / "metrics.json", metrics, extra)
    print(summary, end="")
    print(f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  -> {out / 'metrics.json'}")
    return 0


def cmd_make_data(ns: argparse.Namespace) -> int:

    spec = DEMO_SPEC if ns.preset == "demo" else SyntheticSpec()
    for flag, value in (("--train", ns.train), ("--val", ns.val), ("--test", ns.test), ("--max-objects", ns.max_objects)):
        if value is not None and value < 0:
            raise CliError(f"{flag} must be >= 0, got {value}")
    if ns.image_size is not None and ns.image_size < 1:
        raise CliError(f"--image-size must be >= 1, got {ns.image_size}")
    changes = {}
    if ns.image_size is not None:
        changes["image_size"] = (ns.image_size, ns.image_size)
    if ns.classes:
        changes["classes"] = tuple(ns.classes)
    if ns.max_objects is not None:
        changes["max_objects"] = ns.max_objects
    try:
        spec = dataclasses.replace(spec, **changes)
    except ValueError as err:
        raise CliError(str(err)) from err
    splits = {
        "train": DEMO_SPLITS["train"] if ns.train is None else ns.train,
        "val": DEMO_SPLITS["val"] if ns.val is None else ns.val,
    }
    if ns.test:
        splits["test"] = ns.test
    seed = DEMO_DATA_SEED if ns.seed is None else ns.seed
    started = time.time()
    with claimed_output(ns.out, "make-data", allowed="dataset" if ns.overwrite else None) as out:
        aside = move_aside(out, DATASET_FILES) if ns.overwrite else None
        if aside is not None:
            print(f"--overwrite: the previous dataset is now in {aside}")
        written = write_synthetic_coco(ns.out, splits, spec, seed)
    for split, (images_dir, ann) in written.items():
        print(f"{split}: {splits[split]} images in {images_dir}, annotations {ann}")
    print(f"done in {time.time() - started:.1f} s")
    return 0


def cmd_quantize(ns: argparse.Namespace) -> int:
    if ns.max_images < 1 or ns.batch_size < 1:
        raise CliError(f"--max-images and --batch-size must be >= 1, got {ns.max_images} and {ns.batch_size}")
    images = check_detect_inputs(ns.calibration, 0.5, 1)[: ns.max_images]  # every file checked before the model loads
    with claimed_output(ns.out, "quantize", images=images, checkpoint=ns.checkpoint) as out:
        from models.quantization import QuantizationUnsupported, check_cpu_support, quantize_to_folder

        try:
            check_cpu_support()
        except QuantizationUnsupported as err:
            raise CliError(str(err)) from err
        model, processor = load_detector(ns.checkpoint, ns, "cpu")
        if getattr(model, "is_quantized", False):
            raise CliError(f"--checkpoint {ns.checkpoint!r} is already quantized; give the float checkpoint it came from")
        print(f"quantizing {type(model).__name__} on {len(images)} calibration image(s) ...", flush=True)
        quantize_to_folder(model, processor, images, out, batch_size=ns.batch_size)
    print(f"wrote the int8 detector to {out}; use it with: deformable-detr detect IMAGES --checkpoint {out}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:

    _set_threads(ns.threads)
    with claimed_output(ns.out, "demo", checkpoint=ns.checkpoint):
        return run_demo(ns)


COMMANDS = {"detect": cmd_detect, "train": cmd_train, "eval": cmd_eval, "quantize": cmd_quantize, "demo": cmd_demo, "make-data": cmd_make_data}
