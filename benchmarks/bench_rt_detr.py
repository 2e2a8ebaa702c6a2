"""RT-DETR CPU inference: our RTDetrForObjectDetection vs transformers', same weights, side by side.

R18-vd and R50-vd (the published sizes: R18-vd basic blocks [2, 2, 2, 2], widths [64, 128, 256, 512],
encoder_in_channels [128, 256, 512], hidden_expansion 0.5, 3 decoder layers; R50-vd transformers'
defaults, 6 decoder layers), 80 classes, 300 queries, one 640x640 image, batch 1, fp32,
``torch.inference_mode()``. transformers builds each model with random weights (batch-norm
statistics those of a random image, affine parameters random, so that folding them is tested; ``enc_output``'s bias zero, so that the zeroed border
tokens stay out of the top-k); ours loads its state dict. Our model
runs our ``msda`` op (``disable_custom_kernels=False``), transformers its default.

Three engines per size, run in turn (interleaved) ``--repeats`` times after a warm-up, median reported:

- transformers: ``transformers.RTDetrForObjectDetection``;
- ours: ``models.RTDetrForObjectDetection`` as loaded;
- ours prepared: the same after ``models.rt_detr.inference.prepare_for_inference`` (RepVGG blocks
  fused, batch norms folded, channels-last convolutions).
- ours prepared, detections only, compiled: ``prepare_for_inference(detections_only=True)`` (the
  query selection's box head on the selected tokens only: ``enc_outputs_coord_logits`` is not
  computed) under ``torch.compile`` (inductor, compiled in the warm-up).

Before timing, the logits and boxes of every engine are checked against transformers' (1e-4).
A per-stage breakdown (exclusive wall time inside forward hooks: backbone, input projections,
AIFI, CCFM, query selection, decoder self-attention / deformable attention / FFN, heads) is
taken on one extra run of each. With ``--int8``, ``models.quantize`` on our model (calibrated on
the benchmark image, compiled with inductor) is timed too, or the reason it fails is recorded.

    python -m benchmarks.bench_rt_detr [--threads 2] [--repeats 7] [--only r18|r50] [--int8]

Writes docs/benchmarks/rt_detr.md (a section per size: "rt_detr_r18", "rt_detr_r50").
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from benchmarks.report import machine_description, write_section
from models import RTDetrConfig, RTDetrForObjectDetection
from models.quantization.cpu_support import isa_summary
from models.rt_detr.inference import prepare_for_inference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "rt_detr.md"
HEADER = "# RT-DETR on CPU: ours vs transformers\n\nEvery section is written by `python -m benchmarks.bench_rt_detr`; rerun it to refresh.\n"
STAGES = ("backbone", "encoder_input_proj", "aifi", "ccfm", "decoder_input_proj", "query_selection",
          "decoder_self_attn", "decoder_msda", "decoder_ffn", "decoder_other", "heads", "rest")
TOLERANCE = 1e-4
FAST = "ours prepared, detections only, compiled"


def transformers_config(size: str):
    """``transformers.RTDetrConfig`` of the published R18-vd / R50-vd detectors (80 classes)."""
    from transformers import RTDetrConfig as TheirConfig

    if size == "r50":
        return TheirConfig(num_labels=80)
    backbone = {"model_type": "rt_detr_resnet", "depths": [2, 2, 2, 2], "layer_type": "basic",
                "hidden_sizes": [64, 128, 256, 512], "out_indices": [2, 3, 4]}
    return TheirConfig(backbone_config=backbone, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3, num_labels=80)


def calibrate_batch_norms(model: nn.Module, pixel_values: torch.Tensor) -> None:
    """Give every batch norm the statistics of its input on ``pixel_values`` (one pass, in order,
    so that each sees the maps the earlier ones normalized) and a random affine map. Random
    convolutions with the default statistics (mean 0, variance 1) let activations grow layer by
    layer until every token looks alike and the top-k query selection is a set of near-ties."""
    def hook(module, args):
        (hidden,) = args
        module.running_mean.copy_(hidden.mean((0, 2, 3)))
        module.running_var.copy_(hidden.var((0, 2, 3)).clamp_min(0.05))  # no near-zero variances (dead channels)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)

    norms = [m for m in model.modules() if getattr(m, "running_mean", None) is not None]
    handles = [norm.register_forward_pre_hook(hook) for norm in norms]
    with torch.no_grad():
        model(pixel_values=pixel_values)
    for handle in handles:
        handle.remove()


def build_pair(size: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """transformers' model with random weights and batch-norm statistics, and ours with the same."""
    from transformers import RTDetrForObjectDetection as TheirDetector

    torch.manual_seed(seed)
    their_config = transformers_config(size)
    theirs = TheirDetector(their_config).eval()
    calibrate_batch_norms(theirs, torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(seed + 2)))
    with torch.no_grad():
        # tokens outside the anchors' valid range are zeroed before enc_output, so all share one
        # score, which random weights can put in the top-k (a block of exact ties); a zero bias
        # gives them the prior score (-log 80), below the real tokens', as in a trained model
        theirs.model.enc_output[0].bias.zero_()
    ours = RTDetrForObjectDetection(RTDetrConfig.from_dict(their_config.to_dict(), disable_custom_kernels=False)).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    unexpected = [key for key in unexpected if not key.startswith(("model.decoder.class_embed.", "model.decoder.bbox_embed."))]
    if missing or unexpected:
        raise RuntimeError(f"state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return theirs, ours


def stage_modules(detector: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules of each stage, for either implementation (their submodule names are the same
    except for the query selection and the heads)."""
    model = detector.model
    decoder_layers = list(model.decoder.layers)
    selection = [model.query_selection] if hasattr(model, "query_selection") else [model.enc_output, model.enc_score_head, model.enc_bbox_head]
    return {
        "backbone": [model.backbone],
        "encoder_input_proj": list(model.encoder_input_proj),
        "aifi": list(model.encoder.encoder),
        "ccfm": [model.encoder],
        "decoder_input_proj": list(model.decoder_input_proj),
        "query_selection": selection,
        "decoder_self_attn": [layer.self_attn for layer in decoder_layers],
        "decoder_msda": [layer.encoder_attn for layer in decoder_layers],
        "decoder_ffn": [m for layer in decoder_layers for m in (layer.fc1, layer.fc2, layer.final_layer_norm)],
        "decoder_other": [model.decoder],
        "heads": list(detector.class_embed) + list(detector.bbox_embed),
    }


class StageTimer:
    """Exclusive wall time per stage: time inside a stage's modules, less the time inside another
    stage's modules nested in them (the CCFM is the hybrid encoder without its AIFI, the heads
    count as heads wherever the decoder calls them)."""

    def __init__(self, detector: nn.Module) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.stack: list[list] = []
        self.handles = []
        for stage, modules in stage_modules(detector).items():
            for module in modules:
                self.handles.append(module.register_forward_pre_hook(self._enter(stage)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, stage: str) -> Callable:
        def hook(module, args):
            self.stack.append([stage, time.perf_counter(), 0.0])
        return hook

    def _leave(self, module, args, output) -> None:
        stage, start, nested = self.stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[stage] += elapsed - nested
        if self.stack:
            self.stack[-1][2] += elapsed

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def paired_differences(output, reference) -> tuple[float, float, int]:
    """Max |logits diff| and |boxes diff| of ``output`` against ``reference`` after pairing their
    queries by initial reference box, and how many queries sit at another position.

    The query selection sorts proposals by score; two proposals whose scores differ by less than
    float rounding (a few 1e-6 here) can come out in either order, which permutes the queries
    (the decoder treats them alike) without changing any query's result."""
    ours, theirs = output.init_reference_points[0], reference.init_reference_points[0]
    distance, match = torch.cdist(ours.float(), theirs.float()).min(1)
    if distance.max() > 0.05 or match.unique().numel() != match.numel():
        return float("inf"), float("inf"), -1
    logits = (output.logits[0] - reference.logits[0][match]).abs().max().item()
    boxes = (output.pred_boxes[0] - reference.pred_boxes[0][match]).abs().max().item()
    return logits, boxes, int((match != torch.arange(match.numel())).sum())


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def int8_engine(ours: nn.Module, pixel_values: torch.Tensor) -> tuple[Callable[[], object] | None, str]:
    """``models.quantize`` of our model (compiled), or None and the reason it failed."""
    from models import quantize

    try:
        start = time.perf_counter()
        quantized = quantize(copy.deepcopy(ours), [{"pixel_values": pixel_values}])
        quantized(pixel_values=pixel_values)  # compiles
        return (lambda: quantized(pixel_values=pixel_values)), f"quantized and compiled in {time.perf_counter() - start:.0f} s"
    except Exception as err:  # recorded in the table: the reason is the result
        last = traceback.extract_tb(err.__traceback__)[-1]
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (at {os.path.basename(last.filename)}:{last.lineno})"


def measure(size: str, repeats: int, with_int8: bool) -> dict:
    theirs, ours = build_pair(size)
    prepared = prepare_for_inference(copy.deepcopy(ours))
    pixel_values = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(1))
    fast = torch.compile(prepare_for_inference(copy.deepcopy(ours), detections_only=True))
    runs: dict[str, Callable[[], object]] = {
        "transformers": lambda: theirs(pixel_values=pixel_values),
        "ours": lambda: ours(pixel_values),
        "ours prepared": lambda: prepared(pixel_values),
        FAST: lambda: fast(pixel_values),
    }
    int8_note = "not run (pass --int8)"
    if with_int8:
        run, int8_note = int8_engine(ours, pixel_values)
        if run is not None:
            runs["ours int8"] = run
    differences = {}
    with torch.inference_mode():
        outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs compared
        for name, output in outputs.items():
            differences[name] = paired_differences(output, outputs["transformers"])
        # our unprepared model must match; the prepared one's difference (float rounding of the
        # folded weights, amplified by random weights) is reported, not enforced
        for name in ("ours",):
            if max(differences[name][:2]) > TOLERANCE:
                raise AssertionError(f"{size} {name}: max |logits diff| {differences[name][0]:.1e}, |boxes diff| {differences[name][1]:.1e} > {TOLERANCE}")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
        stages: dict[str, dict[str, float]] = {}
        for name, detector in (("transformers", theirs), ("ours", ours), ("ours prepared", prepared)):
            per_run = []
            for _ in range(3):
                timer = StageTimer(detector)
                elapsed = timed(runs[name])
                timer.remove()
                timer.totals["rest"] = elapsed - sum(timer.totals.values())
                per_run.append(timer.totals)
            stages[name] = {stage: statistics.median(run[stage] for run in per_run) for stage in STAGES}
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"size": size, "median": median, "times": times, "differences": differences, "stages": stages, "int8_note": int8_note}


def markdown(result: dict, repeats: int) -> str:
    size, median, stages = result["size"], result["median"], result["stages"]
    reference = median["transformers"]
    rows = []
    for name, value in median.items():
        logits, boxes, moved = result["differences"][name]
        if moved < 0:  # int8 selects other proposals: no query pairing, no difference to show
            logits, boxes, moved = float("nan"), float("nan"), "other top-k"
        spread = f"{min(result['times'][name]) * 1e3:.0f}–{max(result['times'][name]) * 1e3:.0f}"
        rows.append(f"| {name} | {value * 1e3:.0f} | {spread} | **{reference / value:.2f}x** | {logits:.1e} | {boxes:.1e} | {moved} |")
    if "ours int8" not in median:
        rows.append("| ours int8 | — | — | — | — | — | — |")
    stage_rows = "\n".join(
        f"| {stage} | " + " | ".join(f"{stages[name][stage] * 1e3:.1f}" for name in ("transformers", "ours", "ours prepared")) + " |"
        for stage in STAGES
    )
    totals = " | ".join(f"{sum(stages[name].values()) * 1e3:.0f}" for name in ("transformers", "ours", "ours prepared"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"""## RT-DETR {size.upper()}-vd, 640x640, batch 1

Machine: {machine_description()}; instruction set {isa_summary()}; load average {load:.1f} when the
run ended (the machine is shared: absolute times vary, the engines alternate, so the ratios are
the comparable numbers). Median of {repeats} interleaved runs after one warm-up.

| engine | ms (median) | ms (min–max) | speed-up vs transformers | max \\|logits diff\\| | max \\|boxes diff\\| | queries reordered |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

int8 (`models.quantize`): {result['int8_note']}.

Differences are against transformers' outputs, queries paired by their initial reference box:
proposals whose scores differ by less than float rounding may be selected in either order, which
permutes the queries without changing any query's result ("queries reordered" counts them).

Where the time goes (ms, exclusive wall time in forward hooks, median of 3 runs; "rest" is what no
stage covers: flattening, anchors, output assembly):

| stage | transformers | ours | ours prepared |
|---|---|---|---|
{stage_rows}
| total | {totals} |
"""


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=("r18", "r50"))
    parser.add_argument("--int8", action="store_true", help="also time models.quantize (compiles: minutes)")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for size in ([args.only] if args.only else ["r18", "r50"]):
        result = measure(size, args.repeats, args.int8)
        median = result["median"]
        print(f"{size}: " + "   ".join(f"{name} {value * 1e3:.0f} ms ({median['transformers'] / value:.2f}x)" for name, value in median.items()))
        print("  max |logits diff| vs transformers: " + ", ".join(f"{name} {d[0]:.1e}" for name, d in result["differences"].items()))
        for name, parts in result["stages"].items():
            print(f"  {name:14s} " + " ".join(f"{stage} {value * 1e3:.1f}" for stage, value in parts.items()))
        print(f"  int8: {result['int8_note']}")
        if not args.out.exists():
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(HEADER, encoding="utf-8")
        write_section(f"rt_detr_{size}", markdown(result, args.repeats), page=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
