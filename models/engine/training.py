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

import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from models.data.augmentation import Compose, RandomHorizontalFlip, RandomResize, ToNormalizedTensor, collate, recipe_for_size, train_transforms
from models.data.coco import CocoDetection, resolve_split
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection
from models.engine.evaluation import coco_metrics, predict_dataset, write_metrics
from models.processing.image_processing import DeformableDetrImageProcessor

STATE_FILE = "training_state.pt"
MODEL_DIR = "model"
METRICS_LINES = "metrics.jsonl"
STATE_FORMAT = "deformable-detr-training-state/1"

LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")
BACKBONE_NAMES = ("backbone",)


@dataclass
class TrainingArgs:
    """Hyper-parameters of a training run (the model's own are in ``DeformableDetrConfig``).

    Defaults are the paper's; ``batch_size`` is per process (the paper used 8 GPUs x 4 images).
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
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be one of auto, off, bf16, fp16; got {self.amp!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch}")


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
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available")
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


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_processor(image_size: int, max_size: int):
    """The image processor whose resizing matches training at ``image_size`` (long side <= ``max_size``)."""

    return DeformableDetrImageProcessor(size={"shortest_edge": int(image_size), "longest_edge": int(max_size)})


def export_model(model: torch.nn.Module, processor, directory: Path) -> None:
    """``save_pretrained`` of the model and the processor into ``directory``, replacing it only once complete."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a ``training_state.pt`` (``path`` may also be the run's output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {str(path)!r} (expected the {STATE_FILE} a training run writes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"training state {str(path)!r} cannot be read: {err}") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a training state written by this library (format {STATE_FORMAT!r})")
    state["path"] = str(path)
    return state


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
    bar = (lambda it: tqdm(it, desc="eval", leave=False, dynamic_ncols=True)) if (progress and info.is_main) else None
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


# ------------------------------------------------------------------------------------------ train
def train(args: TrainingArgs, config=None) -> dict:
    """Train (or resume) a ``DeformableDetrForObjectDetection`` as described by ``args`` and ``config``.

    Args:
        args: the run's hyper-parameters and paths.
        config: a ``DeformableDetrConfig`` for a new run (its labels are set from the dataset's
            categories); ignored when resuming, where the checkpoint's config is used and a
            different ``config`` raises.

    Returns:
        ``{"epoch", "step", "metrics", "out", "rank", "model"}``: the last COCO metrics (rank 0 only,
        else None), the output folder, this process's rank and its trained model.
    """

    args.validate()
    info = init_distributed(args.device)
    out = Path(args.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_base = CocoDetection(*resolve_split(args.data, args.train_split))
    val_set = CocoDetection(*resolve_split(args.data, args.val_split))
    if train_base.category_ids != val_set.category_ids:
        raise ValueError(
            f"the {args.train_split!r} and {args.val_split!r} splits of {args.data!r} have different categories: "
            f"{train_base.category_ids} vs {val_set.category_ids}"
        )

    state = load_training_state(args.resume) if args.resume else None
    if state is not None:
        saved = DeformableDetrConfig.from_dict(state["config"])
        if config is not None:
            wanted = config.copy(num_labels=saved.num_labels, id2label=saved.id2label, label2id=saved.label2id)
            diff = _config_difference(wanted.to_dict(), saved.to_dict())
            if diff:
                raise ValueError(f"--resume {state['path']!r}: the checkpoint's model config differs from the one asked for: " + "; ".join(diff))
        config = saved
        if config.num_labels != train_base.num_classes:
            raise ValueError(
                f"--resume {state['path']!r}: the checkpoint has {config.num_labels} classes but {args.data!r} has {train_base.num_classes}"
            )
    else:
        config = DeformableDetrConfig() if config is None else config
        id2label = train_base.id2label
        config = config.copy(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})

    seed_everything(args.seed)  # same initial weights on every process
    # when resuming, the checkpoint supplies every weight: never look for ImageNet backbone weights
    model = DeformableDetrForObjectDetection(config if state is None else config.copy(use_pretrained_backbone=False))
    if args.train_backbone_stem:
        for name, param in model.named_parameters():
            if any(key in name for key in BACKBONE_NAMES):
                param.requires_grad_(True)
    model.to(info.device)

    optimizer = torch.optim.AdamW(
        build_param_groups(model, args.lr, args.lr_backbone, args.lr_linear_proj_mult), lr=args.lr, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.lr_drop)) if args.lr_drop > 0 else None
    autocast_dtype = resolve_autocast(args.amp, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=autocast_dtype == torch.float16)

    start_epoch, step = 0, 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"--resume {state['path']!r}: weights do not fit the model: {err}") from err
        saved_stem = state.get("train_args", {}).get("train_backbone_stem", False)
        if saved_stem != args.train_backbone_stem:
            raise ValueError(
                f"--resume {state['path']!r}: the checkpoint was trained with train_backbone_stem={saved_stem}, "
                f"this run asks for {args.train_backbone_stem}; resume with the same setting"
            )
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            raise ValueError(f"--resume {state['path']!r}: optimizer state does not fit this run's parameters: {err}") from err
        if scheduler is not None and state.get("lr_scheduler") is not None:
            scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        _log(info, f"resumed from {state['path']} at epoch {start_epoch}, step {step}")

    if args.multiscale:
        transforms = train_transforms(**recipe_for_size(args.image_size, args.max_size), flip=args.flip)
    else:

        steps = ([RandomHorizontalFlip()] if args.flip else []) + [RandomResize([args.image_size], args.max_size), ToNormalizedTensor()]
        transforms = Compose(steps)
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

    net: torch.nn.Module = model
    if info.enabled:
        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=args.find_unused_parameters)

    processor = make_processor(args.image_size, args.max_size)
    if info.is_main:
        record = {"train_args": dataclasses.asdict(args), "world_size": info.world_size}
        (out / "train_args.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if state is not None:
        _set_rng_state(state["rng"])
    else:
        seed_everything(args.seed + info.rank)  # dropout differs per process, data order comes from the sampler

    params = [p for p in model.parameters() if p.requires_grad]
    metrics: dict[str, float] | None = None
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        net.train()
        started = time.time()
        sums: dict[str, float] = {}
        count = 0
        total = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not (args.progress and info.is_main), dynamic_ncols=True)
        for batch_index, batch in enumerate(loader):
            if batch_index >= total:
                break
            pixel_values = batch["pixel_values"].to(info.device, non_blocking=True)
            pixel_mask = batch["pixel_mask"].to(info.device, non_blocking=True)
            labels = [{"class_labels": t["class_labels"].to(info.device), "boxes": t["boxes"].to(info.device)} for t in batch["labels"]]
            with torch.autocast(info.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                outputs = net(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
            loss = outputs.loss
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: stopping (the last checkpoint in {str(out)!r} is intact)"
                )
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
        lr_now = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        averages = _all_mean({key: value / max(count, 1) for key, value in sums.items()}, info)
        line = {"epoch": epoch + 1, "step": step, "lr": lr_now, "train_time_s": round(time.time() - started, 2)}
        line.update({f"train_{key}": round(value, 6) for key, value in averages.items()})

        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            metrics, summary, _ = evaluate(net, val_set, processor, info, args.eval_batch_size, autocast_dtype, args.progress)
            if info.is_main:
                line.update({key: round(value, 6) for key, value in metrics.items()})

        if info.is_main:
            atomic_torch_save(
                {
                    "format": STATE_FORMAT,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "config": config.to_dict(),
                    "train_args": dataclasses.asdict(args),
                    "rng": _rng_state(),
                },
                out / STATE_FILE,
            )
            export_model(model, processor, out / MODEL_DIR)
            with open(out / METRICS_LINES, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            if metrics is not None:

                write_metrics(out / "metrics.json", metrics, {"epoch": epoch + 1, "step": step, "split": args.val_split})
            shown = f"epoch {epoch + 1}/{args.epochs} step {step} loss {averages.get('loss', float('nan')):.4f} lr {lr_now:.2e}"
            if "AP" in line:
                shown += f" | AP {line['AP']:.3f} AP50 {line['AP50']:.3f}"
            _log(info, shown)
        _barrier(info)

    return {"epoch": max(start_epoch, args.epochs), "step": step, "metrics": metrics, "out": str(out), "rank": info.rank, "model": model}
