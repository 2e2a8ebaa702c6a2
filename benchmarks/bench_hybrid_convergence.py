"""H-Deformable-DETR's claim, small: hybrid one-to-many matching in training speeds up convergence.

Deformable DETR (the demo detector: two-stage + box refinement), its H-Deformable-DETR version and
DINO, trained by this library's training loop under one budget on the embedded synthetic dataset
(``benchmarks.convergence``: same images, optimizer, learning rate, batch and steps), validated after
every epoch, the final models scored on a test split no run reads. A fourth run, Deformable DETR
with mixed query selection and look-forward-twice but no one-to-many group, separates the effect of
the hybrid matching from that of the two switches H-Deformable-DETR turns on with it.

The hybrid group at the demo's size: 60 one-to-many queries (3 x the 20 one-to-one; the paper has
5 x 300 = 1500) matched against every target repeated k = 6 times, weight lambda = 1. 60 is the
most the demo allows: its 64x64 images give 8x8 + 4x4 = 80 encoder tokens, and two-stage selects
its 20 + 60 proposals among them.

    python -m benchmarks.bench_hybrid_convergence [--epochs 6] [--steps 150] [--threads 1] [--seeds 42,43] [--out runs/hybrid_convergence]

Writes docs/benchmarks/hybrid_convergence.md and docs/benchmarks/hybrid_convergence.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.convergence import SPLITS, Result, curve, epoch_table, final_table, plot, prepare, train_and_test
from models.cli.demo import DEMO_DINO_CONFIG, DEMO_MODEL_CONFIG, DEMO_TRAIN_ARGS
from models.ddetr.config import DeformableDetrConfig
from models.dino.config import DinoConfig
from models.registry import family

ROOT = Path(__file__).resolve().parents[1]
HYBRID_GROUP = {"num_queries_one2many": 60, "k_one2many": 6, "lambda_one2many": 1.0}
"""The one-to-many group scaled to the demo (the paper: 1500, 6, 1)."""


def run_folder(slug: str, seed: int) -> str:
    """The run folder of a detector and seed (the demo's seed: the bare name)."""
    return slug if seed == DEMO_TRAIN_ARGS["seed"] else f"{slug}-seed{seed}"


def configs() -> dict[str, tuple[str, object]]:
    """Display name -> (run folder, config)."""
    hybrid = family("h-deformable-detr").config("two_stage", **DEMO_MODEL_CONFIG, **HYBRID_GROUP)
    switches = {"mixed_selection": hybrid.mixed_selection, "look_forward_twice": hybrid.look_forward_twice}
    return {
        "Deformable DETR": ("deformable-detr", DeformableDetrConfig(**DEMO_MODEL_CONFIG)),
        "H-Deformable-DETR": ("h-deformable-detr", hybrid),
        "Deformable DETR + mqs + lft": ("deformable-detr-mqs-lft", DeformableDetrConfig(**DEMO_MODEL_CONFIG, **switches)),
        "DINO": ("dino", DinoConfig(**DEMO_DINO_CONFIG)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150, help="steps per epoch (batch 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core machine)")
    parser.add_argument("--out", default="runs/hybrid_convergence", help="data and runs go here")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds; each runs every detector (42: the demo's)")
    parser.add_argument("--models", default=None, help="comma-separated run folders to train (default: all four)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the runs already in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs = configs()
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {slug for slug, _ in runs.values()})
        if unknown:
            raise ValueError(f"--models: {unknown} not among {[slug for slug, _ in runs.values()]}")
        runs = {name: (slug, config) for name, (slug, config) in runs.items() if slug in wanted}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.plot_only:
        plot({name: curve(out / run_folder(slug, seeds[0])) for name, (slug, _) in runs.items()}, args.docs / "hybrid_convergence.png")
        return
    data, recipe, test_set = prepare(out, args.epochs, args.steps)
    results: dict[int, dict[str, Result]] = {seed: {} for seed in seeds}
    loads = {}
    for seed in seeds:
        for name, (slug, config) in runs.items():
            run_dir = out / run_folder(slug, seed)
            print(f"training {name} (seed {seed}) -> {run_dir}", flush=True)
            result = results[seed][name] = train_and_test(config, run_dir, data, {**recipe, "seed": seed}, test_set)
            loads[name, seed] = os.getloadavg()[0]
            print(f"{name}, seed {seed}: test AP {result.test['AP']:.3f} AP50 {result.test['AP50']:.3f} "
                  f"({result.minutes:.1f} min, load {loads[name, seed]:.1f})", flush=True)

    args.docs.mkdir(parents=True, exist_ok=True)
    curves = {name: result.curve for name, result in results[seeds[0]].items()}
    plot(curves, args.docs / "hybrid_convergence.png")
    hybrid = configs()["H-Deformable-DETR"][1]
    command = f"python -m benchmarks.bench_hybrid_convergence --epochs {args.epochs} --steps {args.steps} --threads {args.threads} --seeds {args.seeds}"
    load_text = ", ".join(f"{name} {load:.1f}" for (name, _), load in loads.items())
    final_rows = final_table({f"{name}, seed {seed}": result for seed in seeds for name, result in results[seed].items()})
    mean_rows = "\n".join(
        f"| {name} | " + " / ".join(f"{results[seed][name].test['AP']:.3f}" for seed in seeds)
        + f" | {statistics.mean(results[seed][name].test['AP'] for seed in seeds):.3f}"
        + f" | {statistics.mean(results[seed][name].test['AP50'] for seed in seeds):.3f} |"
        for name in runs
    )
    epoch_tables = "\n\n".join(f"Seed {seed}:\n\n{epoch_table({name: result.curve for name, result in results[seed].items()})}" for seed in seeds)
    text = f"""## Hybrid matching (H-Deformable-DETR) vs Deformable DETR vs DINO: convergence under one budget (synthetic data, CPU)

`{command}`: every detector trained by this library's training loop on the embedded synthetic
dataset (2,000 training images of 64x64 px, three shape classes), {args.epochs} epochs of {args.steps}
steps at batch {recipe['batch_size']} ({args.epochs * args.steps * recipe['batch_size']} images seen), AdamW lr
{recipe['lr']} dropped 10x before the last epoch, the same backbone (ResNet-18 cut after stage 2, random init)
and transformer (d_model {DEMO_MODEL_CONFIG['d_model']}, 2 + 2 layers, {DEMO_MODEL_CONFIG['num_queries']} one-to-one queries, 2 levels).

- **Deformable DETR**: the demo detector (two-stage + box refinement).
- **H-Deformable-DETR**: `family("h-deformable-detr").config("two_stage", **DEMO_MODEL_CONFIG,
  num_queries_one2many={hybrid.num_queries_one2many}, k_one2many={hybrid.k_one2many}, lambda_one2many={hybrid.lambda_one2many})`: the same plus,
  in training only, {hybrid.num_queries_one2many} one-to-many queries ({hybrid.num_queries_one2many // hybrid.num_queries} x the one-to-one; the paper has 5 x 300)
  matched to every target repeated k = {hybrid.k_one2many} times, loss weight lambda = {hybrid.lambda_one2many}, and the family's
  mixed query selection (mqs) and look-forward-twice (lft). {hybrid.num_queries_one2many} is the most the demo allows: its
  64x64 images give 8x8 + 4x4 = 80 encoder tokens, and two-stage selects its 20 + {hybrid.num_queries_one2many} proposals among
  them (asking for 100 fails with `ValueError: k must be an int in [1, S=80], got 120`).
- **Deformable DETR + mqs + lft**: the demo detector with H-Deformable-DETR's two switches but no
  one-to-many group: the difference between it and H-Deformable-DETR is the hybrid matching alone.
- **DINO**: `DEMO_DINO_CONFIG` (denoising with {DEMO_DINO_CONFIG['dn_number']} queries before grouping, mqs, lft).

Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} torch thread(s), shared
with other jobs (1-minute load average when each run was scored, in run order: {load_text}), so minutes are
indicative. Training seeds {', '.join(map(str, seeds))} (the seed sets the initial weights, the batch order and the
flips; the data are the same); a finished run found in `--out` is scored, not retrained.

Held-out test split ({len(test_set)} images no run reads), final models, AP per seed and the means:

| model | test AP per seed ({' / '.join(map(str, seeds))}) | mean AP | mean AP50 |
|---|---|---|---|
{mean_rows}

{final_rows}

Validation AP50 / AP after each epoch ({SPLITS['val']} images):

{epoch_tables}

![training loss and AP per epoch, seed {seeds[0]}](hybrid_convergence.png)
"""
    (args.docs / "hybrid_convergence.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
