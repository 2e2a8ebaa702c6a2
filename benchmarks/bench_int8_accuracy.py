"""Held-out COCO AP of a detector in float32 and int8 (``models.quantize``), calibration images apart.

The demo detector by default (``--checkpoint`` takes any of our checkpoint folders trained on the
synthetic data, e.g. one from the README's CPU recipe; give it several times). Evaluation: the demo's
held-out ``test`` split (the images ``deformable-detr demo`` scores, seed 0), through the same
``predict_dataset`` + ``coco_metrics`` path. Calibration: the first ``--calibration-images`` images
of the synthetic ``train`` split (never evaluated). Rows: float32; int8 compiled with inductor; the
int8 model saved with ``save_quantized`` and loaded back with ``load_quantized``.

    python -m benchmarks.bench_int8_accuracy [--checkpoint demo] [--calibration-images 32] [--test-images 100]

Writes the "int8_accuracy" section of docs/benchmarks/int8.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.report import machine_description, write_section
from models import DeformableDetrImageProcessorFast
from models.cli.demo import CHECKPOINT_DIR, DEMO_DATA_SEED, DEMO_SPEC
from models.data.coco import CocoDetection
from models.data.synthetic import generate_image, write_synthetic_coco
from models.engine.evaluation import coco_metrics, predict_dataset
from models.quantization import quantize
from models.quantization.artifact import load_quantized, save_quantized
from models.quantization.cpu_support import isa_summary

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "int8.md"


def load_float(checkpoint: str) -> torch.nn.Module:
    """Our detector from a checkpoint folder (either family, read from its config.json)."""
    import json

    import models

    model_type = json.loads((Path(checkpoint) / "config.json").read_text())["model_type"]
    cls = models.DinoForObjectDetection if model_type == "dino" else models.DeformableDetrForObjectDetection
    return cls.from_pretrained(checkpoint).eval()


def evaluate(model, processor, dataset) -> dict[str, float]:
    detections = predict_dataset(model, processor, dataset, batch_size=10)
    return coco_metrics(dataset.coco, detections)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", help="checkpoint folder (default: the shipped demo detector)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(PAGE))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    checkpoints = args.checkpoint or [str(CHECKPOINT_DIR)]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        written = write_synthetic_coco(Path(scratch) / "data", {"test": args.test_images}, DEMO_SPEC, DEMO_DATA_SEED)
        dataset = CocoDetection(*written["test"])
        calibration_images = [generate_image(DEMO_SPEC, seed=DEMO_DATA_SEED, split="train", index=i)[0] for i in range(args.calibration_images)]
        for checkpoint in checkpoints:
            model = load_float(checkpoint)
            processor = DeformableDetrImageProcessorFast.from_pretrained(checkpoint)
            calibration = [processor(images=calibration_images[i : i + 8], return_tensors="pt") for i in range(0, len(calibration_images), 8)]
            name = "demo" if Path(checkpoint).resolve() == Path(CHECKPOINT_DIR).resolve() else checkpoint
            started = time.perf_counter()
            int8 = quantize(model, calibration)
            quantize_s = time.perf_counter() - started
            saved = os.path.join(scratch, f"int8_{len(rows)}")
            save_quantized(int8, saved, processor)
            for label, detector in (("float32", model), ("int8", int8), ("int8, saved and loaded", None)):
                detector = load_quantized(saved) if detector is None else detector
                started = time.perf_counter()
                metrics = evaluate(detector, processor, dataset)
                seconds = time.perf_counter() - started
                rows.append((name, label, metrics, seconds))
                print(f"{name:10s} {label:24s} AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  ({seconds:.0f} s, first call compiles)", flush=True)
            print(f"{name}: quantize() took {quantize_s:.0f} s; {int8.recipe}")

    lines = [
        "## Accuracy: float32 vs int8 (`python -m benchmarks.bench_int8_accuracy`)",
        "",
        f"Machine: {machine_description()}; ISA {isa_summary()}; load average {os.getloadavg()[0]:.1f}.",
        f"Held-out: the demo's `test` split ({args.test_images} images, seed {DEMO_DATA_SEED}); calibration: the first "
        f"{args.calibration_images} images of the synthetic `train` split. Default recipe (static int8 convolutions and "
        "linear layers; sampling offsets, reference points and the class/box heads float32).",
        "",
        "| checkpoint | model | AP | AP50 | AP75 | ΔAP (points) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label, metrics, _ in rows:
        base = next(m for n, lab, m, _ in rows if n == name and lab == "float32")
        lines.append(f"| {name} | {label} | {metrics['AP']:.4f} | {metrics['AP50']:.4f} | {metrics['AP75']:.4f} | {100 * (metrics['AP'] - base['AP']):+.2f} |")
    write_section("int8_accuracy", "\n".join(lines), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
