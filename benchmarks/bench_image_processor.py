"""Time the image processors on a batch of 8 photographs, side by side in one run, and print ratios.

Compares our slow ``DeformableDetrImageProcessor`` (PIL + numpy), our ``DeformableDetrImageProcessorFast``
(torch + torchvision) and, when ``transformers`` is installed, its slow and fast processors, on the same
8 scikit-image photographs at the default size (shortest edge 800, longest 1333), with and without COCO
detection annotations. Writes ``docs/benchmarks/image_processor.md``.

    python -m benchmarks.bench_image_processor [--repeats 7] [--threads 1,4] [--device cpu]

PIL and numpy (the slow processors) use one core whatever ``--threads`` says; torch (the fast ones) uses
``--threads`` intra-op threads, so each thread count is timed separately.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import skimage.data
import torch

from models.processing.image_processing import DeformableDetrImageProcessor
from models.processing.image_processing_fast import DeformableDetrImageProcessorFast

PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel"
)
OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "image_processor.md"


def load_photos() -> list[np.ndarray]:
    return [getattr(skimage.data, name)() for name in PHOTOS]


def make_annotations(images: list[np.ndarray]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    annotations = []
    for image_id, image in enumerate(images):
        height, width = image.shape[:2]
        objects = []
        for n in range(20):
            x, y = rng.uniform(-0.1, 0.9) * width, rng.uniform(-0.1, 0.9) * height
            w, h = rng.uniform(0.02, 0.4) * width, rng.uniform(0.02, 0.4) * height
            objects.append(
                {"id": n, "bbox": [x, y, w, h], "category_id": int(rng.integers(1, 91)), "area": w * h,
                 "iscrowd": int(n % 10 == 9)}
            )
        annotations.append({"image_id": image_id, "annotations": objects})
    return annotations


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    out = function()
    if isinstance(out.get("pixel_values"), torch.Tensor) and out["pixel_values"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_best(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds; each round runs every function once, so load
    from other jobs on a shared machine hits all of them alike (the minimum is the least disturbed run)."""
    for function in functions.values():
        function()  # warm-up
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            best[name] = min(best[name], timed(function))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", default="1", help="comma-separated torch intra-op thread counts to time, e.g. 1,4"
    )
    parser.add_argument("--device", default="cpu", help="device for the fast processors")
    parser.add_argument("--no-write", action="store_true", help="do not write the markdown file")
    args = parser.parse_args(argv)
    thread_counts = sorted({int(value) for value in args.threads.split(",")})
    warnings.filterwarnings("ignore")

    images = load_photos()
    annotations = make_annotations(images)
    tensors = [torch.from_numpy(image).permute(2, 0, 1).contiguous().to(args.device) for image in images]
    fast_inputs = images if args.device == "cpu" else tensors

    processors: dict[str, Any] = {
        "ours slow": (DeformableDetrImageProcessor(), images, {"return_tensors": "pt"}),
        "ours fast": (DeformableDetrImageProcessorFast(), fast_inputs, {"return_tensors": "pt"}),
    }
    try:
        import transformers

        hf_slow = transformers.DeformableDetrImageProcessor()
        processors["transformers slow"] = (hf_slow, images, {"return_tensors": "pt"})
        hf_fast_kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if args.device != "cpu":
            hf_fast_kwargs["device"] = args.device
        processors["transformers fast"] = (transformers.DeformableDetrImageProcessorFast(), fast_inputs, hf_fast_kwargs)
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None

    results: dict[tuple[int, str, str], float] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for task in ("images", "images + annotations"):
            functions = {}
            for name, (processor, inputs, kwargs) in processors.items():
                call_kwargs = dict(kwargs)
                if task != "images":
                    call_kwargs["annotations"] = annotations
                functions[name] = lambda processor=processor, inputs=inputs, call_kwargs=call_kwargs: processor(
                    inputs, **call_kwargs
                )
            for name, seconds in interleaved_best(functions, args.repeats).items():
                results[(threads, task, name)] = seconds
                print(f"threads={threads} {task:22s} {name:18s} {seconds * 1e3:9.1f} ms")

    lines = []
    for threads in thread_counts:
        for task in ("images", "images + annotations"):
            ours_fast = results[(threads, task, "ours fast")]
            line = (
                f"torch threads={threads}, {task}: ours fast is "
                f"{results[(threads, task, 'ours slow')] / ours_fast:.2f}x faster than ours slow"
            )
            if (threads, task, "transformers fast") in results:
                line += (
                    f", {results[(threads, task, 'transformers fast')] / ours_fast:.2f}x faster than transformers fast"
                    f", {results[(threads, task, 'transformers slow')] / ours_fast:.2f}x faster than transformers slow"
                )
            print(line)
            lines.append(line)

    if args.no_write:
        return
    shapes = ", ".join(f"{name} {image.shape[0]}x{image.shape[1]}" for name, image in zip(PHOTOS, images))
    table = [
        "| torch threads | task | processor | best time per batch of 8 (ms) | time / ours fast |",
        "|---:|---|---|---:|---:|",
    ]
    for (threads, task, name), seconds in results.items():
        ratio = seconds / results[(threads, task, "ours fast")]
        table.append(f"| {threads} | {task} | {name} | {seconds * 1e3:.1f} | {ratio:.2f} |")
    text = "\n".join(
        [
            "## Image processors",
            "",
            "`python -m benchmarks.bench_image_processor` "
            f"(repeats={args.repeats}, torch threads={args.threads}, fast device={args.device}). "
            "PIL/numpy work is single-threaded; torch threads only speed up the fast processors.",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
            f"torch {torch.__version__}"
            + (f", transformers {hf_version}" if hf_version else "")
            + ". The machine was shared with other jobs, so times are the best of `repeats` interleaved rounds "
            "(every processor once per round); all ratios come from this one run.",
            "",
            f"Batch: 8 scikit-image photographs ({shapes}), default size (shortest edge 800, longest 1333), "
            "padded to the batch maximum; annotations: 20 COCO boxes per image (some crowd, some partly outside).",
            "",
            *table,
            "",
            *[f"- {line}" for line in lines],
            "",
        ]
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
