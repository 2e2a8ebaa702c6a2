"""Whole-model CPU speed-up of ``msda.integrations.hf.enable`` on a transformers Deformable DETR.

Builds ``transformers.DeformableDetrForObjectDetection`` with its default (paper) configuration
and a timm ResNet-50 backbone, all with random weights (nothing is downloaded), and times one
forward pass on a batch of one 800x1066 image with transformers' own attention and with ours,
alternating the two so machine load hits both alike. Prints the ratio and writes
``docs/benchmarks/hf_swap.md``.

    python -m benchmarks.bench_hf_swap [--repeats 3] [--threads 2] [--height 800 --width 1066]

Until the compiled kernel is available the op falls back to the pure-PyTorch reference, and the
ratio is about 1; the report says which implementation ran (``msda.active_implementation()``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

import msda
from msda.integrations import hf

ROOT = Path(__file__).resolve().parents[1]


def build_model() -> torch.nn.Module:
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    config = DeformableDetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DeformableDetrForObjectDetection(config).eval()


def attention_timer(model: torch.nn.Module) -> list[float]:
    """Hooks on every deformable attention layer (projections included); returns a list that
    collects the seconds spent in those layers, cleared by the caller before each forward."""
    spent: list[float] = []
    starts: list[float] = []
    for module in model.modules():
        if hasattr(module, "sampling_offsets"):
            module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
            module.register_forward_hook(lambda *_: spent.append(time.perf_counter() - starts.pop()))
    return spent


def time_forward(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        start = time.perf_counter()
        outputs = model(pixel_values=pixel_values)
        return time.perf_counter() - start, outputs.logits


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per variant, after one warm-up each")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "hf_swap.md")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be positive")
    torch.set_num_threads(args.threads)

    import transformers

    implementation = msda.active_implementation("cpu")
    print(f"msda implementation on cpu: {implementation.name} ({implementation.reason})")
    model = build_model()
    pixel_values = torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))

    load_before = os.getloadavg()[0]
    in_attention = attention_timer(model)
    layers = sum(hasattr(module, "sampling_offsets") for module in model.modules())
    times: dict[str, list[float]] = {"transformers": [], "msda": []}
    attention_times: dict[str, list[float]] = {"transformers": [], "msda": []}
    logits: dict[str, torch.Tensor] = {}
    for round_index in range(args.repeats + 1):  # round 0 is the warm-up
        for variant in ("transformers", "msda"):
            (hf.enable if variant == "msda" else hf.disable)(model)
            in_attention.clear()
            seconds, logits[variant] = time_forward(model, pixel_values)
            if round_index > 0:
                times[variant].append(seconds)
                attention_times[variant].append(sum(in_attention))
            label = "warm-up" if round_index == 0 else f"run {round_index}"
            print(f"  {label:8s} {variant:12s} {seconds:7.3f} s, of which deformable attention layers {sum(in_attention):7.3f} s")
    hf.disable(model)
    load_after = os.getloadavg()[0]

    median = {variant: statistics.median(values) for variant, values in times.items()}
    ratio = median["transformers"] / median["msda"]
    attention = {variant: statistics.median(values) for variant, values in attention_times.items()}
    attention_ratio = attention["transformers"] / attention["msda"]
    difference = (logits["transformers"] - logits["msda"]).abs().max().item()
    print(f"transformers forward: {median['transformers']:.3f} s, with msda: {median['msda']:.3f} s, speed-up x{ratio:.2f}")
    print(f"deformable attention layers alone: {attention['transformers']:.3f} s vs {attention['msda']:.3f} s, x{attention_ratio:.2f}")
    print(f"max |logits difference|: {difference:.2e}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "\n".join(
            [
                "## transformers Deformable DETR with and without `msda.integrations.hf.enable`",
                "",
                f"Whole `DeformableDetrForObjectDetection` forward (default config, timm ResNet-50, random weights), "
                f"batch 1, {args.height}x{args.width}, CPU, {args.threads} threads, median of {args.repeats} runs after a warm-up, "
                "the two variants alternated. Produced by `python -m benchmarks.bench_hf_swap`.",
                "",
                f"| attention | whole forward (s) | speed-up | in the {layers} deformable attention layers (s) | speed-up |",
                "|---|---:|---:|---:|---:|",
                f"| transformers (grid_sample) | {median['transformers']:.3f} | 1.00 | {attention['transformers']:.3f} | 1.00 |",
                f"| msda ({implementation.name}) | {median['msda']:.3f} | {ratio:.2f} | {attention['msda']:.3f} | {attention_ratio:.2f} |",
                "",
                f"- msda implementation: `{implementation.name}` ({implementation.reason})",
                f"- every timed run (s): transformers {', '.join(f'{t:.3f}' for t in times['transformers'])}; "
                f"msda {', '.join(f'{t:.3f}' for t in times['msda'])}",
                f"- machine load (1-minute load average) {load_before:.1f} before, {load_after:.1f} after, on "
                f"{os.cpu_count()} logical CPUs: other work on the machine slows both variants",
                f"- max abs difference of the logits: {difference:.2e}",
                f"- {cpu_name()}; torch {torch.__version__}; transformers {transformers.__version__}; "
                f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                "",
            ]
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
