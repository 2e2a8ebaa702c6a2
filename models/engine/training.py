"""Training Deformable DETR on a COCO-format dataset, on one process or many (``torchrun``).

The defaults are the paper's recipe: AdamW with lr 2e-4, 2e-5 for the backbone and 0.1x for the
sampling-offset and reference-point projections, weight decay 1e-4, gradient clipping at 0.1, a step
decay of the learning rate (x0.1) at epoch 40 of 50, horizontal flip / multi-scale resize (short side
480-800, long side <= 1333) / random crop, auxiliary losses (a model config switch, on by default),
mixed precision on GPUs (bf16 where supported, else fp16 with loss scaling).

Every epoch the run evaluates on the validation split, appends a JSON line to ``OUT/metrics.jsonl``
and writes, atomically, ``OUT/training_state.pt`` (everything needed to resume exactly: weights,
optimizer, scheduler, scaler, epoch, step, random states) and ``OUT/model/`` (``config.json``,
``model.safetensors``, ``preprocessor_config.json``: what ``detect``/``eval`` load). An interrupted
write never replaces the last good checkpoint.

Distributed: launched by ``torchrun``, each process takes its share of every epoch through a
``DistributedSampler`` and gradients are averaged by ``DistributedDataParallel`` (NCCL on GPUs, gloo
on CPUs). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from models.common.family import ImageRecipe
from models.data.augmentation import (
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    RandomSquareResize,
    ToNormalizedTensor,
    collate,
    recipe_for_size,
    train_transforms,
)
from models.data.coco import CocoDetection, resolve_split
from models.data.rt_detr_augmentation import rt_detr_train_transforms
from models.engine.checkpoints import (
    MODEL_DIR,
    STATE_FORMAT,
    atomic_torch_save,
    export_model,
    load_training_state,
    naming_write_errors,
    prepare_out_dir,
    reconcile_metrics,
    recover_run_dir,
    rng_state,
    set_rng_state,
)
from models.engine.devices import check_device_name
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.engine.progress import describe_run, progress_bar, progress_iterable
from models.engine.run_folder import (
    METRICS_LINES,
    STATE_FILE,
    TRAIN_ARGS_FILE,
    check_apart_from_inputs,
    check_run_folder,
    dataset_tree,
    folder_lock,
    move_run_aside,
)
from models.registry import Family, build_detector, config_from_dict, family, family_of

DEFAULT_FAMILY = "deformable-detr"
"""The family a run trains when neither ``TrainingArgs.model`` nor the config names one."""
RESUME_FREE = frozenset({
    "data", "out", "resume", "progress", "num_workers", "device", "epochs", "eval_every", "eval_batch_size",
    "find_unused_parameters", "allow_change", "model", "overwrite",
})
"""``TrainingArgs`` fields a resumed run may change freely (paths, speed, logging, and a longer or shorter run)."""
RESUME_FIXED = frozenset({"train_backbone_stem"})
"""Fields that can never change on resume (the optimizer's parameter groups depend on them)."""

LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")
BACKBONE_NAMES = ("backbone",)


@dataclass
class TrainingArgs:
    """Hyper-parameters of a training run (the model's own are in its config).

    Defaults are the paper's; ``batch_size`` is per process (the paper used 8 GPUs x 4 images).
    ``model`` is the family (``models.registry``) to build; None: the config's family (default
    ``deformable-detr``). A resumed run must name the checkpoint's family (or none). ``allow_change``:
    settings that ``resume`` may change from the checkpoint's (every other difference is an error).
    ``overwrite``: an ``out`` that holds another run has that run's files moved aside into
    ``out/replaced-<time>/`` (without it, such an ``out`` is refused; see ``models.engine.run_folder``).
    """

    data: str
    out: str
    epochs: int = 50
    lr_drop: int = 40
    lr: float = 2e-4
    lr_backbone: float = 2e-5
    lr_linear_proj_mult: float = 0.1
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    batch_size: int = 4
    eval_batch_size: int = 4
    num_workers: int = 2
    seed: int = 42
    image_size: int = 800
    max_size: int = 1333
    flip: bool = True
    multiscale: bool = True
    amp: str = "auto"
    device: str = "auto"
    resume: str | None = None
    eval_every: int = 1
    max_steps_per_epoch: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    progress: bool = True
    train_backbone_stem: bool = False
    find_unused_parameters: bool = False
    allow_change: tuple[str, ...] = ()
    model: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

        for name in ("epochs", "batch_size", "eval_batch_size", "image_size", "max_size", "eval_every"):
            positive(name)
        for name in ("lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "clip_max_norm", "num_workers", "lr_drop"):
            positive(name, allow_zero=True)
        if self.max_size < self.image_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= image_size ({self.image_size})")
        check_device_name(self.device, "device")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be one of auto, off, bf16, fp16; got {self.amp!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch}")
        names = {f.name for f in dataclasses.fields(self)}
        for name in self.allow_change:
            if name not in names or name in RESUME_FREE or name in RESUME_FIXED:
                changeable = sorted(names - RESUME_FREE - RESUME_FIXED)
                raise ValueError(f"allow_change: {name!r} is not a setting that needs permission to change; choose from {changeable}")


# ------------------------------------------------------------------------------------ distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (or run alone).

    NCCL when the processes use GPUs, gloo otherwise.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    check_device_name(device, "device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but this machine has no usable MPS device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        dev = torch.device(device if device not in ("auto",) else ("cuda" if use_cuda else "cpu"))
        return DistInfo(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _all_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return {k: float(v) / info.world_size for k, v in zip(keys, tensor.tolist())}


# --------------------------------------------------------------------------------------- pieces
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_autocast(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_param_groups(
    model: torch.nn.Module,
    lr: float,
    lr_backbone: float,
    lr_linear_proj_mult: float,
    linear_proj_names: Sequence[str] = LINEAR_PROJ_NAMES,
    backbone_names: Sequence[str] = BACKBONE_NAMES,
) -> list[dict]:
    """The optimizer groups of the recipe: transformer/heads at ``lr``, backbone at ``lr_backbone``,
    sampling-offset and reference-point projections at ``lr * lr_linear_proj_mult``.

    Parameters that do not require gradients (the frozen stem) are left out. Each group has a
    ``name`` entry (``"main"``, ``"backbone"``, ``"linear_proj"``).
    """
    groups = {"main": [], "backbone": [], "linear_proj": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(key in name for key in backbone_names):
            groups["backbone"].append(param)
        elif any(key in name for key in linear_proj_names):
            groups["linear_proj"].append(param)
        else:
            groups["main"].append(param)
    rates = {"main": lr, "backbone": lr_backbone, "linear_proj": lr * lr_linear_proj_mult}
    return [{"params": params, "lr": rates[name], "name": name} for name, params in groups.items() if params]


class AugmentedDataset(torch.utils.data.Dataset):
    """A :class:`CocoDetection` whose items pass through ``transforms(image, target, rng)``, with the
    ``random.Random`` seeded from (seed, epoch, index): the same epoch always sees the same crops."""

    def __init__(self, base: CocoDetection, transforms, seed: int) -> None:
        self.base, self.transforms, self.seed, self.epoch = base, transforms, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        return self.transforms(image, target, rng)


class TrainingDiverged(FloatingPointError):
    """The loss or the weights became NaN or infinite; the run stopped, and the message says which
    checkpoint is intact (or that none was written yet)."""


def make_processor(image_size: int, max_size: int, images: ImageRecipe = ImageRecipe()):
    """The image processor of a family's ``images`` recipe whose resizing matches training at
    ``image_size``: the short side, long side <= ``max_size`` (``shortest_edge``), or an
    ``image_size`` x ``image_size`` square (``square``, ``max_size`` unused)."""
    if images.resize == "square":
        size = {"height": int(image_size), "width": int(image_size)}
    else:
        size = {"shortest_edge": int(image_size), "longest_edge": int(max_size)}
    return processor_class(images)(size=size, do_normalize=images.normalize)


def processor_class(images: ImageRecipe = ImageRecipe()) -> type:
    """The image processor class that a family's ``images`` recipe names (``"module:Class"``)."""
    module_name, _, class_name = images.processor.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def processor_sizes(processor: Any) -> tuple[int | None, int | None]:
    """``(image_size, max_size)`` of a processor made by :func:`make_processor` (or read back from its
    ``preprocessor_config.json``): the short and long side limits, or a square's side and None."""
    size = processor.size
    if "height" in size:
        return size["height"], None
    return size.get("shortest_edge"), size.get("longest_edge")


def _plain_args(args: TrainingArgs) -> dict:
    """``args`` as plain data (lists, not tuples), as stored in the state and ``train_args.json``."""
    record = dataclasses.asdict(args)
    record["allow_change"] = list(args.allow_change)
    return record


def check_resume_settings(args: TrainingArgs, state: dict) -> dict[str, tuple]:
    """The settings of ``args`` that differ from the checkpoint's, all of them allowed by ``args.allow_change``.

    Raises ``ValueError`` naming every difference that is not allowed (and any change of
    :data:`RESUME_FIXED`); :data:`RESUME_FREE` fields may always differ. Returns
    ``{name: (checkpoint value, this run's value)}``.
    """
    saved = state.get("train_args", {})
    current = _plain_args(args)
    where = f"--resume {state['path']!r}"
    for name in sorted(RESUME_FIXED):
        if name in saved and saved[name] != current[name]:
            raise ValueError(
                f"{where}: the checkpoint was trained with {name}={saved[name]}, this run asks for {current[name]}; "
                "resume with the same setting"
            )
    differ = {name: (saved[name], current[name]) for name in sorted(current)
              if name not in RESUME_FREE and name in saved and saved[name] != current[name]}
    refused = [name for name in differ if name not in args.allow_change]
    if refused:
        listed = "; ".join(f"{name}: checkpoint {differ[name][0]!r}, now {differ[name][1]!r}" for name in refused)
        raise ValueError(
            f"{where}: this run's settings differ from the checkpoint's ({listed}); resume with the same settings "
            f"(e.g. the same --preset and flags), or allow each change by name with --allow-change {' '.join(refused)}"
        )
    return differ


def _apply_rate_changes(optimizer: torch.optim.Optimizer, scheduler, args: TrainingArgs, epoch: int) -> None:
    """Put this run's learning rates, weight decay and lr-drop period into a restored optimizer and scheduler,
    as if the run had used them from the start (the decay steps already taken are kept)."""
    rates = {"main": args.lr, "backbone": args.lr_backbone, "linear_proj": args.lr * args.lr_linear_proj_mult}
    factor = 1.0
    if scheduler is not None:
        scheduler.step_size = max(1, args.lr_drop)
        scheduler.last_epoch = epoch
        factor = scheduler.gamma ** (epoch // scheduler.step_size)
    for group in optimizer.param_groups:
        base = rates[group["name"]]
        group["initial_lr"] = base
        group["lr"] = base * factor
        group["weight_decay"] = args.weight_decay
    if scheduler is not None:
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _config_difference(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def evaluate(
    model: torch.nn.Module,
    dataset: CocoDetection,
    processor,
    info: DistInfo,
    batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[dict[str, float] | None, str | None, list[dict] | None]:
    """COCO metrics of ``model`` on ``dataset``; every process predicts its share, rank 0 scores.

    Returns (metrics, summary text, detections) on rank 0 and (None, None, None) elsewhere.
    """

    indices = list(range(info.rank, len(dataset), info.world_size))
    bar = (lambda it: progress_iterable(it, "eval")) if (progress and info.is_main) else None
    records = predict_dataset(_unwrap(model), processor, dataset, indices, batch_size, info.device, autocast_dtype, bar)
    if info.enabled:
        gathered: list[list[dict] | None] = [None] * info.world_size
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    if not info.is_main:
        return None, None, None
    metrics, summary = coco_metrics(dataset.coco, records)
    return metrics, summary, records


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
            tqdm.write(message)


# ------------------------------------------------------------------------------- the steps of train
class Optimization(NamedTuple):
    """What updates the weights: the optimizer, its learning-rate schedule (None without an lr drop),
    the loss scaler (fp16 only) and the autocast dtype (None: full precision)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR | None
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None


class RunParts(NamedTuple):
    """Everything an epoch uses: the model (``net``: its DDP wrapper, or the model), the optimization,
    the training data, the validation set, the processor saved with the model, and the model config."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimization: Optimization
    loader: DataLoader
    sampler: DistributedSampler
    train_set: AugmentedDataset
    val_set: CocoDetection
    processor: Any
    config: Any


@contextlib.contextmanager
def claim_run_folder(args: TrainingArgs, info: DistInfo) -> Iterator[None]:
    """Hold the run folder ``args.out`` for the block (rank 0 writes, so rank 0 locks).

    Rank 0 creates the folder and proves it writable, takes its lock (``run_folder.folder_lock``),
    refuses a folder holding another run unless ``args.resume`` continues it or ``args.overwrite``
    replaces it (``run_folder.check_run_folder``), finishes or rolls back what a killed write left
    (:func:`recover_run_dir`), and with ``args.overwrite`` moves the old run aside
    (``run_folder.move_run_aside``). Every process learns rank 0's refusal, so none waits for it.
    """
    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        refusal: Exception | None = None
        if info.is_main:
            try:
                check_apart_from_inputs(out, read_trees=[dataset_tree(args.data)])
                prepare_out_dir(out)
                stack.enter_context(folder_lock(out))
                check_run_folder(out, args.resume, args.overwrite)
                for note in recover_run_dir(out):
                    _log(info, note)
                if args.overwrite:
                    aside = move_run_aside(out)
                    if aside is not None:
                        _log(info, f"--overwrite: the previous run's files are now in {str(aside)!r}")
            except (OSError, ValueError) as err:
                refusal = err
        _share_refusal(refusal, info)
        yield


def _share_refusal(refusal: Exception | None, info: DistInfo) -> None:
    """Raise rank 0's ``refusal`` on every process (the other ranks as ``ValueError`` with its text)."""
    if info.enabled:
        message = [None if refusal is None else str(refusal)]
        dist.broadcast_object_list(message, src=0)
        if refusal is None and message[0] is not None:
            raise ValueError(message[0])
    if refusal is not None:
        raise refusal


def read_datasets(args: TrainingArgs) -> tuple[CocoDetection, CocoDetection]:
    """The training and validation splits of ``args.data``: same categories, a trainable training split
    and a validation split with images (a split whose boxes are all crowd boxes only warns)."""
    train_base = CocoDetection(*resolve_split(args.data, args.train_split))
    val_set = CocoDetection(*resolve_split(args.data, args.val_split))
    if train_base.category_ids != val_set.category_ids:
        raise ValueError(
            f"the {args.train_split!r} and {args.val_split!r} splits of {args.data!r} have different categories: "
            f"{train_base.category_ids} vs {val_set.category_ids}"
        )
    problem = train_base.usability_problem()
    if problem is not None:
        raise ValueError(f"training split {args.train_split!r} cannot be trained on: {problem}")
    problem = val_set.usability_problem()
    if problem is not None:
        if not val_set.images:
            raise ValueError(f"validation split {args.val_split!r} cannot be evaluated: {problem}")
        warnings.warn(f"validation split {args.val_split!r}: {problem}; every AP and AR will be -1", stacklevel=3)
    return train_base, val_set


def settle_config(args: TrainingArgs, config: Any, state: dict | None, train_base: CocoDetection) -> tuple[Any, dict[str, tuple]]:
    """The model config of the run and the settings a resume changes (``{name: (before, after)}``).

    A new run: ``config`` (an object or a mapping of fields of the family ``args.model``, default
    ``deformable-detr``; None: the family's defaults) with the dataset's classes. A resumed run: the
    checkpoint's config, which must be of the family asked for, equal ``config`` when one is given,
    and have the dataset's class count; the training settings must match (``check_resume_settings``).
    """
    if state is None:
        return _new_run_config(args, config, train_base.id2label), {}
    where = f"--resume {state['path']!r}"
    saved_model = state.get("train_args", {}).get("model")
    if args.model is not None and saved_model is not None and family(args.model).detector_class is not family(saved_model).detector_class:
        raise ValueError(f"{where}: the checkpoint is a {saved_model} run, this run asks for --model {args.model}; resume with --model {saved_model}")
    saved = config_from_dict(state["config"])
    if config is not None:
        wanted = _config_object(family(args.model or family_of(saved).name), config, saved.id2label)
        diff = _config_difference(wanted.to_dict(), saved.to_dict())
        if diff:
            raise ValueError(f"{where}: the checkpoint's model config differs from the one asked for: " + "; ".join(diff))
    if saved.num_labels != train_base.num_classes:
        raise ValueError(f"{where}: the checkpoint has {saved.num_labels} classes but {args.data!r} has {train_base.num_classes}")
    return saved, check_resume_settings(args, state)


def _new_run_config(args: TrainingArgs, config: Any, id2label: dict[int, str]) -> Any:
    chosen = family(args.model or (family_of(config).name if config is not None and not isinstance(config, Mapping) else DEFAULT_FAMILY))
    return _config_object(chosen, config, id2label)


def _config_object(chosen: Family, config: Any, id2label: dict[int, str]) -> Any:
    """``config`` (None, a mapping of fields or a config object of ``chosen``) with the classes ``id2label``;
    the classes are set before the config is checked, so no setting is compared with another class count."""
    classes = {"num_labels": len(id2label), "id2label": dict(id2label), "label2id": {name: index for index, name in id2label.items()}}
    if config is None:
        return chosen.config_class.from_dict({**chosen.defaults, **classes})
    if isinstance(config, Mapping):
        return chosen.config_class.from_dict({**chosen.defaults, **config, **classes})
    if not isinstance(config, chosen.config_class):
        raise TypeError(f"config must be a {chosen.config_class.__name__} (the config of --model {chosen.name}) or a mapping of its fields, got {type(config).__name__}")
    return config.copy(**classes)


def build_model(args: TrainingArgs, config: Any, resumed: bool, device: torch.device) -> torch.nn.Module:
    """A fresh detector of ``args.model``'s family from ``config``, seeded with ``args.seed`` (the same
    weights on every process), its stem trainable if asked, on ``device``. A resumed run never looks
    for ImageNet backbone weights (the checkpoint supplies every weight)."""
    seed_everything(args.seed)
    model = build_detector(config.copy(use_pretrained_backbone=False) if resumed else config, args.model)
    if args.train_backbone_stem:
        for name, param in model.named_parameters():
            if any(key in name for key in BACKBONE_NAMES):
                param.requires_grad_(True)
    return model.to(device)


def build_optimization(args: TrainingArgs, model: torch.nn.Module, device: torch.device) -> Optimization:
    """AdamW over the recipe's parameter groups (:func:`build_param_groups`), the step decay of the
    learning rate every ``args.lr_drop`` epochs, and mixed precision as ``args.amp`` asks."""
    optimizer = torch.optim.AdamW(
        build_param_groups(model, args.lr, args.lr_backbone, args.lr_linear_proj_mult), lr=args.lr, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.lr_drop)) if args.lr_drop > 0 else None
    autocast_dtype = resolve_autocast(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    return Optimization(optimizer, scheduler, scaler, autocast_dtype)


def restore_run(state: dict, model: torch.nn.Module, optimization: Optimization, args: TrainingArgs,
                changed: dict[str, tuple], info: DistInfo) -> tuple[int, int]:
    """Put a training state into the model and the optimization, apply the allowed rate changes, and
    (rank 0) make the metrics files agree with it. Returns ``(epoch, step)`` to continue from."""
    where = f"--resume {state['path']!r}"
    optimizer, scheduler, scaler, _ = optimization
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{where}: weights do not fit the model: {err}") from err
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as err:
        raise ValueError(f"{where}: optimizer state does not fit this run's parameters: {err}") from err
    if scheduler is not None and state.get("lr_scheduler") is not None:
        scheduler.load_state_dict(state["lr_scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    epoch, step = int(state["epoch"]), int(state["step"])
    if changed.keys() & {"lr", "lr_backbone", "lr_linear_proj_mult", "weight_decay", "lr_drop"}:
        _apply_rate_changes(optimizer, scheduler, args, epoch)
    _log(info, f"resumed from {state['path']} at epoch {epoch}, step {step}")
    for name, (before, after) in changed.items():
        _log(info, f"resume: {name} changed from {before!r} to {after!r} (allowed by allow_change)")
    if info.is_main:
        reconcile_metrics(args.out, state)
    return epoch, step


def training_transforms(args: TrainingArgs, images: ImageRecipe = ImageRecipe()) -> Compose:
    """The augmentation of a run, resized and normalized as the family's ``images`` recipe says (so as
    its processor does at inference): RT-DETR's augmentation (``augment="rt_detr"``), the multi-scale
    recipe (``shortest_edge`` only) or a fixed resize, after an optional flip."""
    if images.resize == "square" and args.multiscale:
        raise ValueError("multiscale: this model family resizes every image to one fixed square size "
                         f"({args.image_size}x{args.image_size}); train with multiscale off (--no-multiscale)")
    mean_std = {} if images.normalize else {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # [0, 1] pixels
    if images.augment == "rt_detr":
        return rt_detr_train_transforms(args.image_size, flip=args.flip, **mean_std)
    if args.multiscale:
        return train_transforms(**recipe_for_size(args.image_size, args.max_size), flip=args.flip, **mean_std)
    resize = RandomSquareResize([args.image_size]) if images.resize == "square" else RandomResize([args.image_size], args.max_size)
    return Compose(([RandomHorizontalFlip()] if args.flip else []) + [resize, ToNormalizedTensor(**mean_std)])


def build_train_loader(args: TrainingArgs, train_base: CocoDetection, info: DistInfo,
                       images: ImageRecipe = ImageRecipe()) -> tuple[AugmentedDataset, DistributedSampler, DataLoader]:
    """The augmented training set (:func:`training_transforms`), this process's sampler and the loader."""
    transforms = training_transforms(args, images)
    train_set = AugmentedDataset(train_base, transforms, args.seed)
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed, drop_last=False)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        collate_fn=collate,
        drop_last=len(train_set) // info.world_size >= args.batch_size,
        persistent_workers=False,
    )
    return train_set, sampler, loader


def wrap_parallel(model: torch.nn.Module, args: TrainingArgs, info: DistInfo) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when several processes train, else ``model`` itself."""
    if not info.enabled:
        return model
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=args.find_unused_parameters)


def write_run_record(args: TrainingArgs, info: DistInfo) -> None:
    """(rank 0) ``train_args.json``: this run's settings and its number of processes."""
    if not info.is_main:
        return
    path = Path(args.out) / TRAIN_ARGS_FILE
    record = {"train_args": _plain_args(args), "world_size": info.world_size}
    with naming_write_errors(path):
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def start_random_streams(state: dict | None, args: TrainingArgs, info: DistInfo) -> None:
    """Restore a resumed run's random states; a new run seeds ``args.seed + rank`` (dropout differs per
    process, the data order comes from the sampler)."""
    if state is not None:
        set_rng_state(state["rng"])
    else:
        seed_everything(args.seed + info.rank)


def train_one_epoch(parts: RunParts, args: TrainingArgs, info: DistInfo, epoch: int, step: int) -> tuple[int, dict, float]:
    """One epoch of optimizer steps (at most ``args.max_steps_per_epoch``).

    Returns ``(step, line, loss)``: the global step after it, the epoch's ``metrics.jsonl`` line
    (epoch, step, lr, time, the mean of every loss term across processes) and the mean loss.
    Raises :class:`TrainingDiverged` on a non-finite loss or weights.
    """
    optimizer, scheduler, scaler, autocast_dtype = parts.optimization
    params = [p for p in parts.model.parameters() if p.requires_grad]
    parts.sampler.set_epoch(epoch)
    parts.train_set.set_epoch(epoch)
    parts.net.train()
    started = time.time()
    sums: dict[str, float] = {}
    count = 0
    total = len(parts.loader) if args.max_steps_per_epoch is None else min(len(parts.loader), args.max_steps_per_epoch)
    bar = progress_bar(total, f"epoch {epoch + 1}/{args.epochs}", enabled=args.progress and info.is_main)  # plain lines into logs
    for batch_index, batch in enumerate(parts.loader):
        if batch_index >= total:
            break
        outputs = _forward(parts, args, batch, info.device, autocast_dtype, epoch, step)
        loss = outputs.loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: {_what_is_kept(args)}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_max_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_max_norm)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        count += 1
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for key, value in (outputs.loss_dict or {}).items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update(1)
    bar.close()
    broken = non_finite_weights(parts.model)
    if broken:  # a finite loss can still end in a NaN update: never save it over the last good checkpoint
        raise TrainingDiverged(f"weights are NaN or infinite ({_names(broken)}) after epoch {epoch + 1}, step {step}; "
                               f"this epoch is not saved: {_what_is_kept(args)}")
    lr_now = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    averages = _all_mean({key: value / max(count, 1) for key, value in sums.items()}, info)
    line = {"epoch": epoch + 1, "step": step, "lr": lr_now, "train_time_s": round(time.time() - started, 2)}
    line.update({f"train_{key}": round(value, 6) for key, value in averages.items()})
    return step, line, averages.get("loss", float("nan"))


def _forward(parts: RunParts, args: TrainingArgs, batch: dict, device: torch.device, autocast_dtype: torch.dtype | None, epoch: int, step: int) -> Any:
    """The model's outputs (with its loss) for one batch. A model whose weights are no longer finite
    can fail inside its loss (no matching exists for NaN boxes): that is :class:`TrainingDiverged` too."""
    pixel_values = batch["pixel_values"].to(device, non_blocking=True)
    pixel_mask = batch["pixel_mask"].to(device, non_blocking=True)
    labels = [{"class_labels": t["class_labels"].to(device), "boxes": t["boxes"].to(device)} for t in batch["labels"]]
    try:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return parts.net(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    except ValueError as err:
        broken = non_finite_weights(parts.model)
        if broken:
            raise TrainingDiverged(
                f"weights are NaN or infinite ({_names(broken)}) at epoch {epoch + 1}, step {step + 1}, so the loss is undefined ({err}): "
                f"{_what_is_kept(args)}"
            ) from err
        if isinstance(err, FloatingPointError):  # finite weights, but the activations overflowed
            raise TrainingDiverged(f"predictions are NaN or infinite at epoch {epoch + 1}, step {step + 1} ({err}): {_what_is_kept(args)}") from err
        raise


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s floating-point parameters that hold a NaN or an infinity."""
    return [name for name, param in model.named_parameters() if param.is_floating_point() and not bool(torch.isfinite(param).all())]


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _what_is_kept(args: TrainingArgs) -> str:
    """The end of a divergence message: the checkpoint that is intact, or that none was written yet."""
    state = Path(args.out) / STATE_FILE
    if state.is_file():
        return f"stopping (the last checkpoint, {str(state)!r}, is intact)"
    if args.resume:
        return f"stopping before this run wrote a checkpoint in {args.out!r}; the run it resumed, {args.resume!r}, is untouched"
    return f"stopping before the first checkpoint (there is none in {args.out!r}; it is written at the end of every epoch)"


def evaluate_epoch(parts: RunParts, args: TrainingArgs, info: DistInfo, line: dict) -> dict[str, float] | None:
    """COCO metrics on the validation split (rank 0; None elsewhere), also added to the epoch's ``line``."""
    metrics, _, _ = evaluate(parts.net, parts.val_set, parts.processor, info, args.eval_batch_size,
                             parts.optimization.autocast_dtype, args.progress)
    if info.is_main:
        line.update({key: round(value, 6) for key, value in metrics.items()})
    return metrics


def save_checkpoint(parts: RunParts, args: TrainingArgs, epoch: int, step: int, line: dict, evaluation: dict | None, evaluated: bool) -> None:
    """(rank 0) Save the epoch: the training state first (with this epoch's records), then what it lets
    :func:`recover_run_dir` and :func:`reconcile_metrics` redo after a crash: the model folder, the
    ``metrics.jsonl`` line, and ``metrics.json`` when the epoch was evaluated."""
    out = Path(args.out)
    optimizer, scheduler, scaler, _ = parts.optimization
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "model": parts.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "config": parts.config.to_dict(),
            "train_args": _plain_args(args),
            "rng": rng_state(),
            "metrics_line": line,
            "evaluation": evaluation,
        },
        out / STATE_FILE,
    )
    export_model(parts.model, parts.processor, out / MODEL_DIR)
    with naming_write_errors(out / METRICS_LINES), open(out / METRICS_LINES, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    if evaluated:
        with naming_write_errors(out / "metrics.json"):
            write_metrics(out / "metrics.json", evaluation)


def _epoch_summary(args: TrainingArgs, epoch: int, step: int, line: dict, loss: float) -> str:
    shown = f"epoch {epoch + 1}/{args.epochs} step {step} loss {loss:.4f} lr {line['lr']:.2e}"
    if "AP" in line:
        shown += f" | AP {line['AP']:.3f} AP50 {line['AP50']:.3f}"
    return shown


# ------------------------------------------------------------------------------------------ train
def train(args: TrainingArgs, config: Any = None) -> dict:
    """Train (or resume) a detector of the family ``args.model`` as described by ``args`` and ``config``.

    The steps: claim the run folder (:func:`claim_run_folder`), read the datasets, settle the model
    config, build the model, the optimizer and the data loader, restore a resumed run, then for every
    epoch train, evaluate when due, and save the checkpoint.

    Args:
        args: the run's hyper-parameters and paths.
        config: the model config of a new run: a config object of the family, or a mapping of its
            fields (its classes are set from the dataset's categories either way); None: the family's
            defaults. When resuming, the checkpoint's config is used and a different ``config`` raises.

    Returns:
        ``{"epoch", "step", "metrics", "out", "rank", "model"}``: the last COCO metrics (rank 0 only,
        else None), the output folder, this process's rank and its trained model.
    """
    args.validate()
    info = init_distributed(args.device)
    out = Path(args.out)
    with claim_run_folder(args, info):
        train_base, val_set = read_datasets(args)
        state = load_training_state(args.resume) if args.resume else None
        config, changed = settle_config(args, config, state, train_base)
        images = family(args.model or family_of(config).name).images
        model = build_model(args, config, resumed=state is not None, device=info.device)
        optimization = build_optimization(args, model, info.device)
        start_epoch, step = 0, 0
        if state is not None:
            start_epoch, step = restore_run(state, model, optimization, args, changed, info)
        train_set, sampler, loader = build_train_loader(args, train_base, info, images)
        steps = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
        _log(info, describe_run(args, model, train_base, val_set, steps, info.device, info.world_size))
        net = wrap_parallel(model, args, info)
        processor = make_processor(args.image_size, args.max_size, images)
        write_run_record(args, info)
        start_random_streams(state, args, info)

        parts = RunParts(model, net, optimization, loader, sampler, train_set, val_set, processor, config)
        evaluation: dict | None = state.get("evaluation") if state is not None else None
        metrics: dict[str, float] | None = None
        for epoch in range(start_epoch, args.epochs):
            step, line, loss = train_one_epoch(parts, args, info, epoch, step)
            evaluated = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs
            if evaluated:
                metrics = evaluate_epoch(parts, args, info, line)
                if info.is_main:
                    evaluation = {**metrics, "epoch": epoch + 1, "step": step, "split": args.val_split}
            if info.is_main:
                save_checkpoint(parts, args, epoch, step, line, evaluation, evaluated)
                _log(info, _epoch_summary(args, epoch, step, line, loss))
            _barrier(info)
    return {"epoch": max(start_epoch, args.epochs), "step": step, "metrics": metrics, "out": str(out), "rank": info.rank, "model": model}
