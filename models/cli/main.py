"""The ``deformable-detr`` command line (also ``python -m models``).

Commands:
    detect     boxes for images: one annotated PNG and one JSON per image
    train      train on a COCO-format dataset (one process, or many with torchrun)
    eval       COCO metrics of a checkpoint on a COCO-format dataset (metrics.json)
    demo       the embedded end-to-end demo on synthetic data
    make-data  write the embedded synthetic dataset in COCO format

Run ``deformable-detr COMMAND --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from models.cli.demo import DEMO_DATA_SEED, DEMO_DINO_CONFIG, DEMO_MODEL_CONFIG, DEMO_SPEC, DEMO_SPLITS, DEMO_TRAIN_ARGS, run_demo
from models.cli.detect import check_detect_inputs, detect_images
from models.cli.errors import CliError, Interrupted, RunStopped, check_output_dir, is_user_os_error, read_json_file, run_command
from models.cli.loading import check_eval_dataset, interrupted_training_message, load_detector, model_family, model_overrides, read_config_file, resolve_device
from models.data.coco import CocoDetection, resolve_split
from models.data.synthetic import SyntheticSpec, write_synthetic_coco
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.engine.training import TrainingArgs, TrainingDiverged, naming_write_errors, train
from models.registry import family, family_names, variant_names

# command-line flag -> TrainingArgs field
_TRAIN_FLAGS = (
    "epochs", "lr_drop", "lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "clip_max_norm", "batch_size",
    "eval_batch_size", "num_workers", "seed", "image_size", "max_size", "flip", "multiscale", "amp", "device", "resume",
    "eval_every", "max_steps_per_epoch", "train_split", "val_split", "progress", "train_backbone_stem",
    "find_unused_parameters", "allow_change",
)


# ---------------------------------------------------------------------------------------- parser
def _add_model_flags(parser: argparse.ArgumentParser, for_training: bool) -> None:
    group = parser.add_argument_group(
        "model" if for_training else "model (only for an original .pth without 'args')",
        "config fields of the model family; --config JSON gives any of them, flags override it",
    )
    group.add_argument("--model", choices=family_names(), default=None, metavar="FAMILY",
                       help=f"model family: {', '.join(family_names())} (default deformable-detr; packages add more through "
                            "the 'deformable_detr.families' entry point); a checkpoint folder's config.json names its own")
    group.add_argument("--config", metavar="JSON", help="a config JSON file of the --model family (config.json layout)")
    if not for_training:
        group.add_argument("--trust-pickle", action="store_true",
                           help="allow an original .pth that holds arbitrary Python objects (it can run code: trusted files only)")
    listed = "; ".join(f"{name}: {', '.join(variants)}" for name, variants in variant_names().items())
    group.add_argument("--variant", help=f"a published variant of the --model family ({listed})")
    group.add_argument("--backbone", help="resnet18/34/50/101 or a timm model name")
    group.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction, default=None,
                       help="start from ImageNet weights found in the local torch/timm cache (never downloaded)")
    group.add_argument("--out-indices", type=int, nargs="+", metavar="STAGE", help="backbone stages (1-4) feeding the transformer")
    group.add_argument("--num-feature-levels", type=int)
    group.add_argument("--d-model", type=int)
    group.add_argument("--enc-layers", type=int)
    group.add_argument("--dec-layers", type=int)
    group.add_argument("--heads", type=int, help="attention heads (encoder and decoder)")
    group.add_argument("--ffn-dim", type=int, help="feed-forward width (encoder and decoder)")
    group.add_argument("--n-points", type=int, help="sampling points per head and level (encoder and decoder)")
    group.add_argument("--num-queries", type=int, help="object queries (also two-stage proposals)")
    group.add_argument("--with-box-refine", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--two-stage", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--dilation", action=argparse.BooleanOptionalAction, default=None, help="DC5")
    group.add_argument("--dropout", type=float)
    group.add_argument("--aux-loss", action=argparse.BooleanOptionalAction, default=None, help="auxiliary decoding losses")


def _add_image_size_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, help="short side to resize to (default: the checkpoint's preprocessor_config.json, else 800)")
    parser.add_argument("--max-size", type=int, help="longest side after resizing (default: the checkpoint's, else 1333)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deformable-detr",
        description="Deformable DETR: detect, train, evaluate, and an embedded end-to-end demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'deformable-detr COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=version_string(), help="print the versions of this package and torch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # detect
    p = sub.add_parser("detect", help="detect objects in images; write annotated PNGs and JSON",
                       description="Detect objects in images. Writes OUT/<image>.png (boxes, labels and scores drawn) "
                                   "and OUT/<image>.json (boxes as x0, y0, x1, y1 pixels) for every image.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (their image files, not sub-folders) or quoted glob patterns ('photos/**/*.jpg')")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="'demo' (the shipped demo detector), a Hugging Face-layout directory, a training output folder, "
                        "a training_state.pt, or an original .pth")
    p.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring above this (default 0.5)")
    p.add_argument("--top-k", type=int, default=100, help="at most this many detections per image (default 100)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass (default 1). Larger batches are padded to their largest image and the "
                        "backbone sees that padding, so results for differently sized images can differ slightly from batch size 1")
    p.add_argument("--out", default="detections", metavar="DIR", help="output folder (default ./detections)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _add_image_size_flags(p)
    _add_model_flags(p, for_training=False)

    # train
    p = sub.add_parser("train", help="train on a COCO-format dataset",
                       description="Train Deformable DETR on a COCO-format dataset (images/ + annotations JSON for "
                                   "train and val). Defaults are the paper's recipe; --preset demo is the small CPU recipe "
                                   "of the embedded demo. Launch with torchrun for several processes (NCCL on GPUs, gloo on CPUs).")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder (see docs/cli.md for the layouts)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: training_state.pt, model/, metrics.jsonl, metrics.json")
    p.add_argument("--preset", choices=("paper", "demo"), default="paper", help=_preset_help())
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    t = p.add_argument_group("training", "the defaults shown are --preset paper's; --preset demo changes some (see --preset)")
    t.add_argument("--epochs", type=int, help="default 50")
    t.add_argument("--lr-drop", type=int, help="epochs between x0.1 learning-rate drops (default 40)")
    t.add_argument("--lr", type=float, help="default 2e-4")
    t.add_argument("--lr-backbone", type=float, help="default 2e-5")
    t.add_argument("--lr-linear-proj-mult", type=float, help="factor for sampling_offsets / reference_points (default 0.1)")
    t.add_argument("--weight-decay", type=float, help="default 1e-4")
    t.add_argument("--clip-max-norm", type=float, help="gradient clipping norm, 0 = off (default 0.1)")
    t.add_argument("--batch-size", type=int, help="images per process and step (default 4)")
    t.add_argument("--eval-batch-size", type=int)
    t.add_argument("--num-workers", type=int, help="data-loading processes (default 2)")
    t.add_argument("--seed", type=int, help="default 42")
    t.add_argument("--image-size", type=int, help="largest short side of the multi-scale recipe (default 800)")
    t.add_argument("--max-size", type=int, help="longest side (default 1333)")
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flip (default on)")
    t.add_argument("--multiscale", action=argparse.BooleanOptionalAction, default=None,
                   help="multi-scale resize and random crop (default on); off: fixed resize to --image-size")
    t.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), help="mixed precision (auto: on for GPUs)")
    t.add_argument("--device", help="cpu, cuda or auto (default)")
    t.add_argument("--resume", metavar="PATH", help="training_state.pt (or the output folder holding it) to continue from")
    t.add_argument("--eval-every", type=int, help="evaluate every N epochs (default 1)")
    t.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke tests)")
    t.add_argument("--train-split", help="default train")
    t.add_argument("--val-split", help="default val")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default on)")
    t.add_argument("--train-backbone-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the ResNet stem and first stage (frozen in the paper's recipe)")
    t.add_argument("--find-unused-parameters", action=argparse.BooleanOptionalAction, default=None, help="DDP option")
    t.add_argument("--allow-change", nargs="+", metavar="SETTING",
                   help="with --resume: settings (TrainingArgs names, e.g. lr batch_size) allowed to differ from the checkpoint's")
    _add_model_flags(p, for_training=True)

    # eval
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset",
                       description="Evaluate a checkpoint on a COCO-format split with pycocotools; prints the COCO summary "
                                   "and writes OUT/metrics.json (AP, AP50, AP75, APs, APm, APl, AR...). With --predictions, "
                                   "scores a COCO results JSON instead of running a model.")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--checkpoint", metavar="PATH", help="model to evaluate (see detect --help)")
    p.add_argument("--predictions", metavar="JSON", help="a COCO results file to score instead of a checkpoint")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--out", default="eval", metavar="DIR", help="output folder (default ./eval)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    _add_image_size_flags(p)
    _add_model_flags(p, for_training=False)

    # demo
    p = sub.add_parser("demo", help="the embedded end-to-end demo (synthetic data, no downloads)",
                       description="Generate the synthetic shapes dataset, load the committed demo detector (trained by "
                                   "'deformable-detr train --preset demo'; or train one now with --train), evaluate it on "
                                   "held-out images and write annotated PNGs, JSON and metrics.json to OUT.")
    p.add_argument("--out", default="demo_output", metavar="DIR", help="output folder (default ./demo_output)")
    p.add_argument("--train", action="store_true", help="train a new detector with the demo recipe instead of using the committed one (slow on CPUs)")
    p.add_argument("--checkpoint", metavar="PATH", help="use this detector instead of the committed one")
    p.add_argument("--num-images", type=int, default=8, help="held-out images to draw detections on (default 8)")
    p.add_argument("--test-images", type=int, default=None, help="held-out images to evaluate on (default 100)")
    p.add_argument("--threshold", type=float, default=0.3, help="score threshold of the drawn detections (default 0.3)")
    p.add_argument("--epochs", type=int, help="with --train: epochs (default: the demo recipe's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto")

    # make-data
    p = sub.add_parser("make-data", help="write the embedded synthetic dataset (COCO format)",
                       description="Write the synthetic shapes dataset: OUT/images/<split>/*.png and OUT/annotations/<split>.json. "
                                   "Deterministic from --seed.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--preset", choices=("demo", "default"), default="demo",
                   help=f"image settings: demo (the default) {_spec_words(DEMO_SPEC)}; default {_spec_words(SyntheticSpec())}")
    p.add_argument("--train", type=int, default=None, help="training images (default 2000)")
    p.add_argument("--val", type=int, default=None, help="validation images (default 100)")
    p.add_argument("--test", type=int, default=0, help="test images (default 0)")
    p.add_argument("--seed", type=int, default=None, help="dataset seed (default 0)")
    p.add_argument("--image-size", type=int, help=f"square image side in pixels (default: the preset's, {DEMO_SPEC.image_size[1]} for demo, {SyntheticSpec().image_size[1]} for default)")
    p.add_argument("--classes", nargs="+", help="shape names: circle square triangle cross ring diamond")
    p.add_argument("--max-objects", type=int)
    return parser


# --------------------------------------------------------------------------------------- helpers
def _spec_words(spec: SyntheticSpec) -> str:
    height, width = spec.image_size
    return f"{width}x{height} px, {spec.min_objects}-{spec.max_objects} shapes of {len(spec.classes)} classes ({' '.join(spec.classes)})"


def _preset_help() -> str:
    """What ``--preset demo`` changes, from the values it really uses (``DEMO_TRAIN_ARGS``, ``DEMO_MODEL_CONFIG``)."""
    def flag(name: str, value) -> str:
        name = name.replace("_", "-")
        if isinstance(value, bool):
            return f"--{name}" if value else f"--no-{name}"
        return f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}"

    settings = " ".join(flag(k, v) for k, v in DEMO_TRAIN_ARGS.items())
    m = DEMO_MODEL_CONFIG
    model = (f"{m['backbone']} (random init) cut after stage {m['backbone_kwargs']['out_indices'][-1]}, {m['num_feature_levels']} levels, "
             f"d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} layers, {m['num_queries']} queries, "
             f"box refinement {'on' if m['with_box_refine'] else 'off'}, two-stage {'on' if m['two_stage'] else 'off'}")
    return ("starting point for every setting (default paper: the paper's recipe and ResNet-50 model, the defaults shown below). "
            f"demo: the embedded demo's CPU recipe for 64-px images, i.e. {settings}, and its model: {model}. "
            "Flags given on the command line override the preset's values")


def version_string() -> str:
    """``deformable-detr <package version> (torch <version>)``; the package version of the installed distribution."""
    from importlib import metadata

    try:
        version = metadata.version("deformable-detr-msda")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"deformable-detr {version} (torch {torch.__version__})"


def _line_buffered_output() -> None:
    """Progress lines appear as they are printed, also when stdout is a pipe or a file (``demo | tee log``)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError, OSError):  # replaced streams (pytest's capture, io.StringIO)
            pass


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise CliError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------------- commands
def cmd_detect(ns: argparse.Namespace) -> int:
    paths = check_detect_inputs(ns.images, ns.threshold, ns.top_k, ns.batch_size)  # before the model is loaded
    check_output_dir(ns.out)
    device = resolve_device(ns.device)
    model, processor = load_detector(ns.checkpoint, ns, device)
    out = Path(ns.out)
    results = detect_images(model, processor, paths, out, ns.threshold, ns.top_k, device, batch_size=ns.batch_size)
    total = sum(r.count for r in results)
    print(f"{len(results)} image(s), {total} detection(s); wrote {len(results)} annotated PNG + JSON pair(s) to {out}")
    return 0


def build_train_setup(ns: argparse.Namespace):
    """(TrainingArgs, config) from the train command's flags, preset and model family (``--model``)."""
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
        base.update(DEMO_DINO_CONFIG if chosen.name == "dino" else DEMO_MODEL_CONFIG)
    base.update(chosen.defaults)
    if ns.config:
        base.update(read_config_file(ns.config, config_class=chosen.config_class))
    base.update(model_overrides(ns))
    base.setdefault("use_pretrained_backbone", False)
    try:
        config = chosen.config_class.from_dict(base)
    except (ValueError, TypeError) as err:
        raise CliError(f"model config: {err}") from err
    if ns.preset != "demo" and not ns.resume and not config.use_pretrained_backbone and str(config.backbone).startswith("resnet"):
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
    out = check_output_dir(ns.out)  # before any prediction
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
                                         progress=lambda it: tqdm(it, desc="eval", dynamic_ncols=True))
        except (FileNotFoundError, ValueError) as err:
            if is_user_os_error(err) and getattr(err, "filename", None):
                raise
            raise CliError(str(err)) from err
        metrics, summary = coco_metrics(dataset.coco, detections)
        extra["checkpoint"] = ns.checkpoint
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
    check_output_dir(ns.out)
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
    written = write_synthetic_coco(ns.out, splits, spec, seed)
    for split, (images_dir, ann) in written.items():
        print(f"{split}: {splits[split]} images in {images_dir}, annotations {ann}")
    print(f"done in {time.time() - started:.1f} s")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:

    _set_threads(ns.threads)
    return run_demo(ns)


COMMANDS = {"detect": cmd_detect, "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo, "make-data": cmd_make_data}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deformable-detr``; returns the exit status."""
    _line_buffered_output()
    parser = build_parser()
    ns = parser.parse_args(argv)
    return run_command(ns.command, COMMANDS[ns.command], ns)  # the one error-exit path (models/cli/errors.py)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
