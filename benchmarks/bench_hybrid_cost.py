"""What H-Deformable-DETR's one-to-many group costs in training, and that inference does not pay it.

The same detector (two-stage + box refinement + mixed query selection + look-forward-twice, i.e.
``family("h-deformable-detr").config("two_stage", ...)``) with ``num_queries_one2many = 0`` ("plain")
and with the one-to-many group ("hybrid"), at two sizes:

- demo: the demo detector (``DEMO_MODEL_CONFIG``: ResNet-18 cut after stage 2, d_model 64, 2 + 2
  layers, 2 levels, 20 queries), batch 8 of 64x64 images with 3 objects each, 60 one-to-many queries
  (the most 64x64 images allow, see ``bench_hybrid_convergence.py``);
- paper-like: the paper's detector (ResNet-50, d_model 256, 6 + 6 layers, 8 heads, FFN 1024, 4
  levels, 300 queries, random weights), batch 2 of 512x512 images with 7 objects each, 1500
  one-to-many queries (k = 6, as the paper; it trains at about 800x1333).

Measured, per size, in one process with one torch thread:

- training step: forward (with the losses and Hungarian matching) + backward + gradient clipping +
  AdamW, median of ``--rounds`` after ``--warmup``; the two models alternate step by step (the
  order flips every round), so both see the same machine load;
- inference: ``model.eval()`` forward under ``torch.no_grad()`` on the same batch, interleaved the
  same way (post-processing not included);
- activation memory: the bytes of the tensors autograd saves for backward in one training forward
  (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, parameters excluded):
  exact and independent of the allocator and the load;
- peak RSS of a training step: in a fresh process per model (``MALLOC_MMAP_THRESHOLD_`` fixed so that
  freed buffers go back to the OS), after one warm-up step (AdamW's state allocated), the kernel's
  high-water mark is reset (``/proc/self/clear_refs``), one step runs, and the peak (``VmHWM``) minus
  the resident size before the step is reported.

    python -m benchmarks.bench_hybrid_cost [--sizes demo,paper-like] [--rounds N] [--warmup 1]

Writes docs/benchmarks/hybrid_cost.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from models.cli.demo import DEMO_MODEL_CONFIG
from models.registry import build_detector, family

ROOT = Path(__file__).resolve().parents[1]
CLIP_MAX_NORM = 0.1  # the training loop's default


class Size(NamedTuple):
    """A benchmark size: config fields over H-Deformable-DETR's two-stage variant, batch, image side,
    objects per image, one-to-many queries, timed rounds."""

    fields: dict[str, Any]
    batch: int
    image: int
    objects: int
    one2many: int
    rounds: int


SIZES = {
    "demo": Size({**DEMO_MODEL_CONFIG, "num_labels": 3}, batch=8, image=64, objects=3, one2many=60, rounds=21),
    "paper-like": Size({"use_pretrained_backbone": False, "num_labels": 91}, batch=2, image=512, objects=7, one2many=1500, rounds=5),
}


def config(size: Size, one2many: int) -> Any:
    """H-Deformable-DETR (two-stage) at ``size`` with ``one2many`` one-to-many queries (0: none)."""
    return family("h-deformable-detr").config("two_stage", **size.fields, num_queries_one2many=one2many)


def batch(size: Size, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Random images and ``size.objects`` random boxes (cx, cy, w, h in [0, 1]) per image."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size.batch, 3, size.image, size.image, generator=generator)
    labels = []
    for _ in range(size.batch):
        centres = 0.2 + 0.6 * torch.rand(size.objects, 2, generator=generator)
        sides = 0.05 + 0.3 * torch.rand(size.objects, 2, generator=generator)
        classes = torch.randint(0, size.fields["num_labels"], (size.objects,), generator=generator)
        labels.append({"class_labels": classes, "boxes": torch.cat([centres, sides], dim=1)})
    return pixels, labels


def build(size: Size, one2many: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_detector(config(size, one2many)).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, labels: list) -> float:
    """One training step; its seconds."""
    started = time.perf_counter()
    loss = model(pixel_values=pixels, labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_MAX_NORM)
    optimizer.step()
    return time.perf_counter() - started


def eval_step(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    """One inference forward (eval mode, no autograd); its seconds."""
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        model(pixel_values=pixels)
    seconds = time.perf_counter() - started
    model.train()
    return seconds


def saved_activation_bytes(model: torch.nn.Module, pixels: torch.Tensor, labels: list) -> int:
    """Bytes autograd keeps for backward over one training forward (storages once, parameters excluded)."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(pixel_values=pixels, labels=labels).loss
    del loss
    return sum(storages.values())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(size_name: str, one2many: int) -> None:
    """In a fresh process: print the peak RSS increase (MiB) of one training step after a warm-up step."""
    torch.set_num_threads(1)
    size = SIZES[size_name]
    model, optimizer = build(size, one2many)
    pixels, labels = batch(size)
    train_step(model, optimizer, pixels, labels)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    train_step(model, optimizer, pixels, labels)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak_rss_mib(size_name: str, one2many: int) -> float:
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.bench_hybrid_cost", "--rss-child", size_name, str(one2many)]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def measure(size_name: str, rounds: int | None, warmup: int) -> dict[str, Any]:
    """Step and inference times (interleaved), activation bytes and peak RSS of plain vs hybrid."""
    size = SIZES[size_name]
    rounds = size.rounds if rounds is None else rounds
    models = {"plain": build(size, 0), "hybrid": build(size, size.one2many)}
    pixels, labels = batch(size)
    load_before = os.getloadavg()
    train_times: dict[str, list[float]] = {name: [] for name in models}
    eval_times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(warmup + rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            seconds = train_step(*models[name], pixels, labels)
            if round_index >= warmup:
                train_times[name].append(seconds)
        for name in order:
            seconds = eval_step(models[name][0], pixels)
            if round_index >= warmup:
                eval_times[name].append(seconds)
        print(f"  {size_name} round {round_index + 1}/{warmup + rounds}", flush=True)
    activations = {name: saved_activation_bytes(model, pixels, labels) / 2**20 for name, (model, _) in models.items()}
    load_after = os.getloadavg()
    del models
    peaks = {"plain": peak_rss_mib(size_name, 0), "hybrid": peak_rss_mib(size_name, size.one2many)}
    return {
        "rounds": rounds,
        "train_ms": {name: statistics.median(times) * 1e3 for name, times in train_times.items()},
        "eval_ms": {name: statistics.median(times) * 1e3 for name, times in eval_times.items()},
        "train_fastest_ms": {name: min(times) * 1e3 for name, times in train_times.items()},
        "eval_fastest_ms": {name: min(times) * 1e3 for name, times in eval_times.items()},
        "activations_mib": activations,
        "peak_rss_mib": peaks,
        "load": (load_before[0], load_after[0]),
    }


def describe(size_name: str) -> str:
    size = SIZES[size_name]
    plain = config(size, 0)
    return (f"{plain.backbone}, d_model {plain.d_model}, {plain.encoder_layers} + {plain.decoder_layers} layers, "
            f"{plain.num_feature_levels} levels, {plain.num_queries} + {size.one2many} queries (k = {plain.k_one2many}), "
            f"batch {size.batch} x {size.image}x{size.image}, {size.objects} objects per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,paper-like", help=f"comma-separated, of {list(SIZES)}")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per size (default: demo 21, paper-like 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--rss-child", nargs=2, metavar=("SIZE", "ONE2MANY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    torch.set_num_threads(1)
    names = [name.strip() for name in args.sizes.split(",")]
    for name in names:
        if name not in SIZES:
            raise ValueError(f"--sizes: {name!r} is not one of {list(SIZES)}")
    results = {name: measure(name, args.rounds, args.warmup) for name in names}

    rows, fastest_rows = [], []
    for name, result in results.items():
        train, evaluation, activations, peaks = result["train_ms"], result["eval_ms"], result["activations_mib"], result["peak_rss_mib"]
        fastest_train, fastest_eval = result["train_fastest_ms"], result["eval_fastest_ms"]
        fastest_rows.append(
            f"| {name} | {result['rounds']} | {fastest_train['plain']:.0f} | {fastest_train['hybrid']:.0f} | {fastest_train['hybrid'] / fastest_train['plain']:.2f}x "
            f"| {fastest_eval['plain']:.0f} | {fastest_eval['hybrid']:.0f} | {fastest_eval['hybrid'] / fastest_eval['plain']:.2f}x |"
        )
        rows.append(
            f"| {name} | {train['plain']:.0f} | {train['hybrid']:.0f} | {train['hybrid'] / train['plain']:.2f}x "
            f"| {activations['plain']:.0f} | {activations['hybrid']:.0f} | {activations['hybrid'] / activations['plain']:.2f}x "
            f"| {peaks['plain']:.0f} | {peaks['hybrid']:.0f} "
            f"| {evaluation['plain']:.0f} | {evaluation['hybrid']:.0f} | {evaluation['hybrid'] / evaluation['plain']:.2f}x "
            f"| {result['load'][0]:.1f} / {result['load'][1]:.1f} |"
        )
    sizes_text = "\n".join(f"- **{name}**: {describe(name)}." for name in names)
    command = f"python -m benchmarks.bench_hybrid_cost --sizes {','.join(names)} --warmup {args.warmup}" + (f" --rounds {args.rounds}" if args.rounds else "")
    rounds_text = ", ".join(f"{name} {result['rounds']}" for name, result in results.items())
    text = f"""## The training cost of H-Deformable-DETR's one-to-many group (CPU)

`{command}`: the same detector (two-stage + box refinement + mixed query selection +
look-forward-twice) without ("plain") and with ("hybrid") the one-to-many group, random weights:

{sizes_text}

Times: median of the timed rounds ({rounds_text}) after {args.warmup} warm-up round(s), plain and hybrid alternating step by step in one process
(one torch thread). Training step = forward with the losses and Hungarian matching + backward +
gradient clipping + AdamW. Inference = eval-mode forward under `no_grad` (no post-processing).
Activations = bytes of the tensors autograd saves for backward in one training forward (each
storage once, parameters excluded; exact, independent of load and allocator). Peak RSS = the
high-water mark of one training step over the resident size before it, in a fresh process per model
after a warm-up step (`/proc/self/clear_refs` reset, `MALLOC_MMAP_THRESHOLD_=131072` so freed buffers
leave the process). Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, shared with other jobs
(1-minute load average before / after each size's timings in the last column), so ratios, not
milliseconds, are the comparable numbers.

| size | train step plain (ms) | hybrid (ms) | ratio | activations plain (MiB) | hybrid (MiB) | ratio | peak RSS of a step plain (MiB) | hybrid (MiB) | inference plain (ms) | hybrid (ms) | ratio | load |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The fastest round of each (the least disturbed by the other jobs):

| size | rounds | train step plain (ms) | hybrid (ms) | ratio | inference plain (ms) | hybrid (ms) | ratio |
|---|---|---|---|---|---|---|---|
{chr(10).join(fastest_rows)}
"""
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "hybrid_cost.md").write_text(text)
    print(text)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
