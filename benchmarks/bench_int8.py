"""CPU speed of int8 detectors, side by side in one run: ours float32 / int8 vs transformers and ONNX Runtime.

For each detector (Deformable DETR ResNet-50 at 800x1066, and the demo detector at 64x64), batch 1:

- ours fp32: ``DeformableDetrForObjectDetection`` in ``torch.inference_mode()`` (the reference for ratios);
- ours fp32 compiled: the same float graph through ``torch.export`` + ``torch.compile`` (inductor, freezing),
  to separate what compiling gives from what int8 gives;
- ours int8: ``models.quantize`` (static int8 convolutions and linear layers, inductor);
- ours int8 dynamic (``--dynamic``): ``QuantizationRecipe(activations="dynamic")``, int8 linear layers with
  per-call activation scales, convolutions float32;
- transformers fp32: ``transformers.DeformableDetrForObjectDetection`` with the same weights (R50 only);
- ORT fp32: ONNX Runtime on our model exported to ONNX (the ONNX export runs the pure-PyTorch attention,
  ``disable_custom_kernels=True``, as our op has no ONNX form);
- ORT int8: ONNX Runtime's own static quantization (``quantize_static``, QDQ, per-channel int8 weights,
  uint8 activations) of that export, calibrated on the same batches.

The R50 weights are random (transformers builds them; ours loads the same directory): speed does not
depend on them. Calibration for both int8 paths: random images (1 at 800x1066, 8 at 64x64) (the values do not change
the speed either; ``bench_int8_accuracy`` measures accuracy on real images). Runs alternate between
engines; the median of ``--repeats`` is reported.

    python -m benchmarks.bench_int8 [--threads 2] [--repeats 5] [--only r50|demo]

To measure an AVX2 machine on a newer one, restrict PyTorch's kernels and oneDNN before Python starts:
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.bench_int8`` (inductor follows
``ATEN_CPU_CAPABILITY``; ONNX Runtime has no such switch and keeps using what the CPU has).

Writes the "int8_speed" section of docs/benchmarks/int8.md ("int8_speed_avx2_avx2_r50" with the
restriction and ``--only r50``, ...).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.references import transformers_r50_detector
from benchmarks.report import machine_description, write_section
from models import DeformableDetrForObjectDetection
from models.cli.demo import CHECKPOINT_DIR
from models.quantization import QuantizationRecipe, quantize
from models.quantization.cpu_support import isa_summary
from models.quantization.export import OutputFields, export_detector

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "int8.md"


class LogitsAndBoxes(torch.nn.Module):
    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.detector(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return out.logits, out.pred_boxes


def onnx_sessions(checkpoint: str, inputs: tuple[torch.Tensor, torch.Tensor], calibration: list[dict], scratch: str, threads: int):
    """ONNX Runtime sessions for our model exported to ONNX: float32, and int8 from ``quantize_static``."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    model = DeformableDetrForObjectDetection.from_pretrained(checkpoint, disable_custom_kernels=True).eval()
    os.makedirs(scratch, exist_ok=True)
    fp32_path, pre_path, int8_path = (os.path.join(scratch, name) for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsAndBoxes(model), inputs, fp32_path, input_names=["pixel_values", "pixel_mask"],
                          output_names=["logits", "pred_boxes"], dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # the export takes one image at a time: the same calibration images, one per call
            self.batches = iter([{"pixel_values": b["pixel_values"][i : i + 1].numpy(), "pixel_mask": b["pixel_mask"][i : i + 1].numpy()}
                                 for b in calibration for i in range(b["pixel_values"].shape[0])])

        def get_next(self):
            return next(self.batches, None)

    try:
        quant_pre_process(fp32_path, pre_path)
    except Exception as err:  # the pre-processing (shape inference + fusions) is advised, not required
        print(f"quant_pre_process failed ({type(err).__name__}: {err}); quantizing the export as it is")
        pre_path = fp32_path
    quantize_static(pre_path, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    feed = {"pixel_values": inputs[0].numpy(), "pixel_mask": inputs[1].numpy()}
    sessions = {}
    for name, path in (("ORT fp32", fp32_path), ("ORT int8", int8_path)):
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        sessions[name] = (lambda s=session: s.run(None, feed))
    return sessions


def compiled_float(model: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], object]:
    """Our float model exported and compiled with inductor (freezing), as the int8 path is."""
    from models.quantization.calibrate import Batch

    fields = ("logits", "pred_boxes")
    graph = export_detector(OutputFields(model, fields), Batch(*inputs), dynamic=False).module()
    compiled = torch.compile(graph)

    def run():
        with torch._inductor.config.patch(freezing=True):
            return compiled(*inputs)

    return run


def measure(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each run, the runs alternating; the first call of each (warm-up,
    compilation) is not counted."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            print(f"  warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
        for _ in range(repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def profile_table(run: Callable[[], object], rows: int = 8) -> str:
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    events = sorted(profile.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    lines = ["| operator | self CPU (s) | share | calls |", "|---|---|---|---|"]
    for event in events[:rows]:
        lines.append(f"| `{event.key}` | {event.self_cpu_time_total / 1e6:.3f} | {100 * event.self_cpu_time_total / total:.0f}% | {event.count} |")
    return "\n".join(lines)


def bench_detector(name: str, checkpoint: str, inputs, calibration, reference, repeats: int, threads: int, scratch: str, others: bool = True,
                   dynamic: bool = False):
    # ONNX Runtime first: its calibration holds every intermediate tensor of a batch (gigabytes at 800x1066)
    sessions = onnx_sessions(checkpoint, inputs, calibration, scratch, threads) if others else {}
    gc.collect()
    ours = DeformableDetrForObjectDetection.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    int8 = quantize(ours, calibration)
    print(f"{name}: quantize() {time.perf_counter() - started:.1f} s", flush=True)
    runs: dict[str, Callable[[], object]] = {
        "ours fp32": lambda: ours(pixel_values=inputs[0], pixel_mask=inputs[1]),
        "ours fp32 compiled": compiled_float(ours, inputs),
        "ours int8": lambda: int8(pixel_values=inputs[0], pixel_mask=inputs[1]),
    }
    if dynamic:
        int8_dynamic = quantize(ours, calibration, QuantizationRecipe(activations="dynamic"))
        runs["ours int8 dynamic"] = lambda: int8_dynamic(pixel_values=inputs[0], pixel_mask=inputs[1])
    if reference is not None and others:
        runs["transformers fp32"] = lambda: reference(pixel_values=inputs[0], pixel_mask=inputs[1])
    runs.update(sessions)
    load_before = os.getloadavg()[0]
    median = measure(runs, repeats)
    load_after = os.getloadavg()[0]
    for engine, seconds in median.items():
        print(f"{name:5s} {engine:20s} {seconds:.3f} s  {median['ours fp32'] / seconds:.2f}x of ours fp32", flush=True)
    return median, (load_before, load_after), profile_table(runs["ours int8"]), profile_table(runs["ours fp32"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("r50", "demo"))
    parser.add_argument("--ours-only", action="store_true", help="skip transformers and ONNX Runtime")
    parser.add_argument("--dynamic", action="store_true", help="also time QuantizationRecipe(activations='dynamic') (int8 linear layers only)")
    parser.add_argument("--out", default=str(PAGE))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import onnxruntime
    import transformers

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        if args.only in (None, "r50"):
            reference = transformers_r50_detector()
            r50_dir = os.path.join(scratch, "r50")
            reference.save_pretrained(r50_dir)
            inputs = (torch.randn(1, 3, 800, 1066), torch.ones(1, 800, 1066, dtype=torch.long))
            calibration = [{"pixel_values": torch.randn(1, 3, 800, 1066), "pixel_mask": inputs[1]}]  # one: ORT's calibration holds every activation
            results["R50, 800x1066"] = bench_detector("r50", r50_dir, inputs, calibration, reference, args.repeats, args.threads, os.path.join(scratch, "onnx_r50"), not args.ours_only, args.dynamic)
        if args.only in (None, "demo"):
            inputs = (torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.long))
            calibration = [{"pixel_values": torch.randn(4, 3, 64, 64), "pixel_mask": torch.ones(4, 64, 64, dtype=torch.long)} for _ in range(2)]
            results["demo, 64x64"] = bench_detector("demo", str(CHECKPOINT_DIR), inputs, calibration, None, args.repeats * 20, args.threads, os.path.join(scratch, "onnx_demo"), not args.ours_only, args.dynamic)

    restricted = {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(name)}
    section = "_".join(["int8_speed", *(value.lower() for value in restricted.values()), *([args.only] if args.only else [])])
    engines = ("ours fp32", "ours fp32 compiled", "ours int8", "ours int8 dynamic", "transformers fp32", "ORT fp32", "ORT int8")
    engines = tuple(e for e in engines if any(e in median for median, *_ in results.values()))
    lines = [
        "## Speed: float32 vs int8 on CPU (`" + " ".join([*(f"{k}={v}" for k, v in restricted.items()), "python -m benchmarks.bench_int8"]) + "`)",
        "",
        f"Machine: {machine_description()}; ISA {isa_summary()}"
        + (f" (used: only what {', '.join(f'{k}={v}' for k, v in restricted.items())} allows)" if restricted else "")
        + f"; {os.cpu_count()} CPUs shared with other jobs. "
        f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}. "
        f"Batch 1, {args.threads} threads, median of alternating runs; ratio = ours fp32 time / engine time (higher is faster).",
        "",
        "| detector | load average (start, end) | " + " | ".join(engines) + " |",
        "|---|---|" + "---|" * len(engines),
    ]
    for detector, (median, load, _, _) in results.items():
        cells = [f"{median[e]:.3f} s ({median['ours fp32'] / median[e]:.2f}x)" if e in median else "—" for e in engines]
        lines.append(f"| {detector} | {load[0]:.1f}, {load[1]:.1f} | " + " | ".join(cells) + " |")
    for detector, (_, _, int8_profile, fp32_profile) in results.items():
        lines += ["", f"Where the time goes, {detector}, ours int8 (one profiled run):", "", int8_profile,
                  "", "and ours fp32:", "", fp32_profile]
    write_section(section, "\n".join(lines), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
