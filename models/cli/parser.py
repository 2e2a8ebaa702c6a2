"""The ``deformable-detr`` argument parser, built from torch-free modules.

``--help``, ``--version``, ``COMMAND --help`` and argument errors are answered from here without
importing torch (a test checks it): the flags, their help texts (the demo preset's from
:mod:`models.cli.presets`, the families and variants from :mod:`models.registry`) and the parser
behaviour (no abbreviated flags; an unknown flag names the closest valid one) need nothing heavy.
Each command's flags are added by one function (``_add_detect``, ``_add_train``, ...), so adding a
flag touches one place.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from models.cli.presets import DEMO_MODEL_CONFIG, DEMO_NMS_IOU, DEMO_SPEC, DEMO_TRAIN_ARGS
from models.data.synthetic_spec import SyntheticSpec
from models.registry import family_names, variant_names

PROG = "deformable-detr"


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with abbreviations off (``--thresh`` is not ``--threshold``) and,
    on the top-level parser, ``commands``: each command's own parser by name."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the error on one line and where to read the options (not the whole usage)."""
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def closest_flag(parser: argparse.ArgumentParser, given: str) -> str | None:
    """The option of ``parser`` closest to ``given`` (``--thresh`` -> ``--threshold``), or None."""
    if not isinstance(given, str):
        raise TypeError(f"given must be a str, got {type(given).__name__}")
    options = sorted(option for action in parser._actions for option in action.option_strings)
    close = difflib.get_close_matches(given.split("=", 1)[0], options, n=1, cutoff=0.6)
    return close[0] if close else None


def parse_arguments(parser: CommandParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``); unknown flags exit 2 with one line naming the closest
    valid flag of the command (``unrecognized arguments: --thresh (did you mean --threshold?)``)."""
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        command_parser = parser.commands.get(getattr(ns, "command", None), parser)
        hints = [f"{item} (did you mean {close}?)" if item.startswith("-") and (close := closest_flag(command_parser, item)) else item
                 for item in unknown]
        command_parser.error(f"unrecognized arguments: {' '.join(hints)}")
    return ns


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


def build_parser() -> CommandParser:
    """The whole command line: the top-level options and one sub-parser per command."""
    parser = CommandParser(
        prog=PROG,
        description="Deformable DETR: detect, train, evaluate, and an embedded end-to-end demo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'deformable-detr COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=version_string(), help="print the versions of this package and torch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    sub.required = True
    for add in (_add_detect, _add_train, _add_eval, _add_quantize, _add_demo, _add_make_data):
        command_parser = add(sub)
        parser.commands[command_parser.prog.split()[-1]] = command_parser
    return parser


def _add_nms_flag(parser: argparse.ArgumentParser, default: float | None) -> None:
    what = f"default {default:g}; --nms 0 turns it off" if default else "default off, as in transformers; 0 = off"
    parser.add_argument("--nms", type=float, default=default, metavar="IOU",
                        help="class-aware non-maximum suppression after top-k: drop a detection when a better-scored one of "
                             f"the same class overlaps it with IoU above IOU, in (0, 1] ({what})")


def _add_detect(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    _add_nms_flag(p, default=None)
    p.add_argument("--out", default="detections", metavar="DIR", help="output folder (default ./detections)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _add_image_size_flags(p)
    _add_model_flags(p, for_training=False)
    return p


def _add_train(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    t.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run already in --out: its files are moved into OUT/replaced-<time>/ (without it, such an --out is refused)")
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
    return p


def _add_eval(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    _add_nms_flag(p, default=None)
    p.add_argument("--device", default="auto")
    _add_image_size_flags(p)
    _add_model_flags(p, for_training=False)
    return p


def _add_quantize(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("quantize", help="an int8 CPU copy of a checkpoint, calibrated on images; detect and eval load it",
                       description="Quantize a detector to int8 for the CPU (PT2E, x86 inductor): convolutions and linear layers "
                                   "in int8 with scales observed on the calibration images, the box heads, sampling offsets and the "
                                   "deformable attention in fp32. Writes OUT/config.json, OUT/int8_program.pt2 and "
                                   "OUT/preprocessor_config.json (docs/quantization.md).")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="the float detector: 'demo', a Hugging Face-layout directory, a training output folder, a training_state.pt, or an original .pth")
    p.add_argument("--calibration", required=True, nargs="+", metavar="IMAGE",
                   help="calibration images: files, folders or quoted glob patterns, from the deployment distribution and never the "
                        "evaluation images; a few dozen are enough")
    p.add_argument("--max-images", type=int, default=64, help="use at most this many calibration images (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration images per batch (default 8)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold a run, a dataset or the checkpoint)")
    _add_image_size_flags(p)
    _add_model_flags(p, for_training=False)
    return p


def _add_demo(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    _add_nms_flag(p, default=DEMO_NMS_IOU)
    p.add_argument("--epochs", type=int, help="with --train: epochs (default: the demo recipe's)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --train: replace a training run already in OUT/training (moved into OUT/training/replaced-<time>/)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    return p


def _add_make_data(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out: its images/ and annotations/ are moved into OUT/replaced-<time>/ "
                        "(without it, such an --out is refused)")
    return p


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
    """``deformable-detr <package version> (torch <version>)``, both read from the installed distributions."""
    return f"deformable-detr {_installed_version('deformable-detr-msda')} (torch {_installed_version('torch')})"


def _installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` from its metadata (torch's without importing torch)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


