"""End-to-end CPU inference: our DeformableDetrForObjectDetection vs transformers', same weights,
and our DINO-4scale beside them.

ResNet-50, 4 levels, 300 queries, 91 classes, one 800x1066 image, fp32. Both Deformable DETR
models get the same random weights (transformers builds and saves them; ours loads the directory).
DINO-4scale (ResNet-50, 900 queries, FFN 2048, 91 classes) runs with random weights. Runs alternate
between the models and the median is reported, with the largest output difference and a per-stage
breakdown (backbone, encoder, decoder, rest) taken with forward hooks.

    python -m benchmarks.bench_end_to_end [--threads 2] [--repeats 3] [--height 800 --width 1066]

Writes docs/benchmarks/end_to_end.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch

from benchmarks.references import transformers_r50_detector
from models import DeformableDetrForObjectDetection, dino_4scale

STAGES = ("backbone", "encoder", "decoder")


class StageTimer:
    """Wall time spent inside ``model.backbone``, ``model.encoder`` and ``model.decoder``."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.handles = []
        for name in STAGES:
            module = getattr(base, name)
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))
        self.started: dict[str, float] = {}

    def _start(self, name):
        def hook(module, args):
            self.started[name] = time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(module, args, output):
            self.totals[name] += time.perf_counter() - self.started.pop(name)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks", "end_to_end.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    reference = transformers_r50_detector()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        ours = DeformableDetrForObjectDetection.from_pretrained(directory).eval()
    dino = dino_4scale(num_labels=91).eval()

    pixel_values = torch.randn(1, 3, args.height, args.width)
    runs = {
        "transformers": lambda: reference(pixel_values=pixel_values),
        "ours": lambda: ours(pixel_values),
        "dino": lambda: dino(pixel_values),
    }
    bases = {"transformers": reference.model, "ours": ours.model, "dino": dino.model}
    times: dict[str, list[float]] = {name: [] for name in runs}
    stages: dict[str, dict[str, list[float]]] = {name: {stage: [] for stage in STAGES + ("rest",)} for name in runs}
    with torch.inference_mode():
        outputs = {name: run() for name, run in runs.items()}  # warm-up (and builds our folded backbone)
        for _ in range(args.repeats):
            for name, run in runs.items():
                timer = StageTimer(bases[name])
                elapsed = timed(run)
                timer.remove()
                times[name].append(elapsed)
                for stage in STAGES:
                    stages[name][stage].append(timer.totals[stage])
                stages[name]["rest"].append(elapsed - sum(timer.totals.values()))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            runs["ours"]()
    op_time = sum(event.self_cpu_time_total for event in profile.key_averages() if event.key.startswith("msda::")) / 1e6
    profiled_total = sum(event.self_cpu_time_total for event in profile.key_averages()) / 1e6
    top = sorted(profile.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)[:6]

    logits_diff = (outputs["ours"].logits - outputs["transformers"].logits).abs().max().item()
    boxes_diff = (outputs["ours"].pred_boxes - outputs["transformers"].pred_boxes).abs().max().item()
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["transformers"] / median["ours"]

    print(f"transformers {median['transformers']:.3f} s   ours {median['ours']:.3f} s   speed-up {ratio:.2f}x   DINO-4scale (ours) {median['dino']:.3f} s")
    print(f"max |logits diff| {logits_diff:.2e}   max |pred_boxes diff| {boxes_diff:.2e}")
    for name in runs:
        parts = "  ".join(f"{stage} {statistics.median(values):.3f}" for stage, values in stages[name].items())
        print(f"  {name:12s} {parts}")
    print(f"  ours: msda op {op_time:.3f} s of {profiled_total:.3f} s profiled CPU time")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = "\n".join(
        f"| {stage} | {statistics.median(stages['transformers'][stage]):.3f} | {statistics.median(stages['ours'][stage]):.3f} | {statistics.median(stages['dino'][stage]):.3f} |"
        for stage in STAGES + ("rest",)
    )
    top_rows = "\n".join(f"| `{event.key}` | {event.self_cpu_time_total / 1e6:.3f} | {event.count} |" for event in top)
    text = f"""## End-to-end inference vs transformers (CPU)

`python -m benchmarks.bench_end_to_end --threads {args.threads} --repeats {args.repeats}`: Deformable DETR,
ResNet-50, 4 levels, 300 queries, 91 classes, one {args.height}x{args.width} image, fp32,
`torch.inference_mode()`, {args.threads} threads, the same random weights in both models,
median of {args.repeats} alternating runs. Machine: {platform.processor() or platform.machine()},
{os.cpu_count()} CPUs, load average {load:.1f} when the run ended (other jobs share this machine, so
absolute times vary; the two models alternate, so the ratio is the comparable number);
torch {torch.__version__}, transformers {transformers.__version__}.

| | transformers 4.57.6 | ours | DINO-4scale (ours) |
|---|---|---|---|
| time per image (s) | {median['transformers']:.3f} | {median['ours']:.3f} | {median['dino']:.3f} |
| speed-up vs transformers' Deformable DETR | 1.00x | **{ratio:.2f}x** | {median['transformers'] / median['dino']:.2f}x |

DINO-4scale does more work than Deformable DETR: 900 queries instead of 300 in a decoder whose query
positions are recomputed from the boxes at every layer, FFN 2048 instead of 1024 in all 12 layers,
and two-stage proposals over every encoder token.

Outputs: max |logits difference| {logits_diff:.1e}, max |pred_boxes difference| {boxes_diff:.1e}.

Where the time goes (seconds, median; from forward hooks on `model.backbone`, `model.encoder`,
`model.decoder`; "rest" is projections, flattening, heads):

| stage | transformers | ours | DINO-4scale (ours) |
|---|---|---|---|
{rows}

Our largest operators (one profiled run, self CPU seconds; the deformable attention op itself
takes {op_time:.3f} s of {profiled_total:.3f} s):

| operator | seconds | calls |
|---|---|---|
{top_rows}

What makes the difference: transformers runs the deformable attention as `grid_sample` per level
plus stacking and a weighted sum (most of its encoder time); ours is one fused `msda` op. Our
backbone folds the frozen BatchNorm into the convolutions and runs channels-last at inference
(a cached copy, rebuilt when a weight changes). What remains is dense work both models share:
the encoder's linear layers (about 18k tokens x 6 layers: value/offset/weight/output
projections and the 1024-wide FFN) and the ResNet-50 convolutions; the attention op is now a
small share.
"""
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
