"""Times the compiled msda op against the pure-PyTorch reference at Deformable DETR's shapes.

Encoder: an 800x1066 image gives levels 100x134, 50x67, 25x34, 13x17 (S = Q = 17,821), M = 8 heads,
D = 32 channels, P = 4 points; decoder: Q = 300. Locations are realistic: encoder queries sample
around their own pixel, decoder queries around random reference points, with offsets of a few
pixels (the paper's initial ring plus noise).

CPU rows: forward and forward+backward, B = 1 and 2, fp32, in two modes, for each instruction set
the kernels can be built for here (AVX-512 where torch reports it, and AVX2 through
``MSDA_CPU_ISA=avx2``; each in a subprocess, since one process loads one build):

- cold: one timed call at a time, with a timed call of the reference between them, the way the op
  runs inside a model where other layers evict its data between calls;
- warm: calls back to back (see ``side_by_side``).

The reference is ``transformers``' ``MultiScaleDeformableAttention`` (its grid_sample version) when
``transformers`` is installed, else ``msda.ms_deform_attn_reference``. The ISA of each row is checked
on the loaded library with ``objdump -d``: an AVX2 build has no zmm or ymm16-31 register in it. CUDA rows (when torch sees a GPU):
B = 1, 2, 8, fp32 and bf16, plus the fewest bytes each call must move divided by its time, as a
fraction of the copy bandwidth measured in the same run.

    python -m benchmarks.bench_msda            # prints the table, updates docs/benchmarks.md
    python -m benchmarks.bench_msda --quick    # fewer repetitions, no file written
    python -m benchmarks.bench_msda --isa avx2 --device cpu --quick   # one ISA only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch

import msda
import msda.loader
from benchmarks.report import machine_description, write_section

LEVELS = [(100, 134), (50, 67), (25, 34), (13, 17)]
HEADS, CHANNELS, POINTS = 8, 32, 4


def make_inputs(batch: int, decoder: bool, dtype: torch.dtype, device: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(LEVELS, dtype=torch.int64)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    if decoder:
        refs = torch.rand(300, 2, generator=generator) * 0.9 + 0.05
    else:
        centres = []
        for height, width in LEVELS:
            ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
            centres.append(torch.stack([xs.flatten() / width, ys.flatten() / height], -1))
        refs = torch.cat(centres)
    queries = refs.shape[0]
    levels = len(LEVELS)
    angles = torch.arange(HEADS) * (2 * torch.pi / HEADS)
    ring = torch.stack([angles.cos(), angles.sin()], -1)[:, None, None, :] * torch.arange(1, POINTS + 1)[None, None, :, None]
    offsets = ring + torch.randn(batch, queries, HEADS, levels, POINTS, 2, generator=generator)  # pixels
    size = torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32)[None, None, None, :, None, :]
    locations = refs[None, :, None, None, None, :] + offsets / size
    weights = torch.rand(batch, queries, HEADS, levels * POINTS, generator=generator).softmax(-1)
    weights = weights.view(batch, queries, HEADS, levels, POINTS)
    value = torch.randn(batch, total, HEADS, CHANNELS, generator=generator)
    move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return move(value), shapes.to(device), starts.to(device), move(locations), move(weights)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def median_time(fn, device: str, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` calls.

    Several warm-up calls, not one: the first calls of a process pay page faults for their large
    outputs until the allocator keeps the memory (measured: the compiled forward's first five calls
    took 13-32 ms, the later ones 11-12 ms).
    """
    for _ in range(warmup):
        fn()
    _synchronize(device)
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def side_by_side(ours, reference, device: str, rounds: int, ours_per_round: int = 3, warmup: int = 5):
    """Median times of ``ours`` and ``reference`` in seconds, measured in alternation.

    Each round times the reference once and ours ``ours_per_round`` times, so both sample the same
    moments of a shared, noisy machine (slow phases lasting seconds were seen on the 2-core machines).
    Before its timed calls, ours gets two untimed calls per round: a reference call (1-2 s of large
    allocations) leaves the allocator and caches cold, and the first calls after it measured up to
    1.3x slower than ours in a loop of its own, which is how a training or inference loop calls it.
    Both get ``warmup`` calls first.
    """
    for _ in range(warmup):
        ours()
        reference()
    _synchronize(device)
    ours_times, reference_times = [], []
    for _ in range(rounds):
        reference_times.append(_timed(reference, device))
        for _ in range(2):
            ours()
        ours_times.extend(_timed(ours, device) for _ in range(ours_per_round))
    return statistics.median(ours_times), statistics.median(reference_times)


def cold_side_by_side(ours, reference, device: str, rounds: int, warmup: int = 2):
    """Median times of ``ours`` and ``reference`` in seconds, each call timed on its own, alternating.

    Every timed call of ``ours`` follows a call of the reference, which allocates and touches
    hundreds of MB (grid_sample's per-level outputs): caches and the TLB hold none of ours's data,
    and its output blocks may have been handed to the reference, as when other layers of a model
    run between two calls of the op.
    """
    for _ in range(warmup):
        reference()
        ours()
    _synchronize(device)
    ours_times, reference_times = [], []
    for _ in range(rounds):
        reference_times.append(_timed(reference, device))
        ours_times.append(_timed(ours, device))
    return statistics.median(ours_times), statistics.median(reference_times)


def reference_op():
    """(name, op) of the reference: transformers' MultiScaleDeformableAttention module if installed."""
    try:
        from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention
    except ImportError:
        return "msda.ms_deform_attn_reference", msda.ms_deform_attn_reference
    module = MultiScaleDeformableAttention()
    shapes_list = [tuple(level) for level in LEVELS]

    def op(value, shapes, starts, locations, weights):
        return module(value, shapes, shapes_list, starts, locations, weights, 64)

    return "transformers' MultiScaleDeformableAttention (grid_sample)", op


def library_isa() -> str:
    """The ISA the loaded CPU library was built for, checked in its machine code where objdump exists."""
    isa = msda.loader.cpu_isa()
    library = msda.loader.loaded_library()
    if library is None or shutil.which("objdump") is None:
        return isa
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True).stdout
    evex = len(re.findall(r"%zmm|%ymm(?:1[6-9]|2[0-9]|3[01])\b", code))
    if isa == "AVX2" and evex:
        raise RuntimeError(f"the library built for AVX2 uses {evex} AVX-512 registers")
    return "AVX-512" if evex else isa


def forward_fn(op, inputs):
    return lambda: op(*inputs)


def forward_backward_fn(op, inputs):
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    grad = torch.randn(value.shape[0], locations.shape[1], HEADS * CHANNELS, device=value.device, dtype=value.dtype)

    def run():
        output = op(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.autograd.grad(output, leaves, grad)

    return run


def min_bytes(inputs, backward: bool) -> int:
    """Bytes a call must at least read and write (each tensor once)."""
    value, _, _, locations, weights = inputs
    output = value.shape[0] * locations.shape[1] * HEADS * CHANNELS * value.element_size()
    tensors = value.nbytes + locations.nbytes + weights.nbytes + output
    return tensors * 2 if backward else tensors  # backward: read grad_out + inputs, write three grads


def copy_bandwidth(device: str) -> float:
    source = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = median_time(lambda: target.copy_(source), device, 10)
    return 2 * source.nbytes / seconds


ENCODER_NOTE = "encoder Q=17821"


def cpu_rows(quick: bool) -> dict:
    """This process's CPU rows (its loaded build's ISA): cold and warm, as dicts."""
    rounds = 3 if quick else 9
    warm_rounds = 2 if quick else 5
    ref_name, ref_op = reference_op()
    isa = library_isa() if msda.active_implementation("cpu").name == "compiled-cpu" else "reference"
    native = torch.backends.cpu.get_cpu_capability()
    result = {
        "load_start": os.getloadavg()[0],
        "isa": isa,
        "native": native,
        "forced": isa == "AVX2" and native == "AVX512",
        "reference": ref_name,
        "machine": machine_description(),
        "implementation": f"{msda.active_implementation('cpu').name} ({msda.active_implementation('cpu').reason})",
        "bandwidth": copy_bandwidth("cpu"),
        "rows": [],
    }
    for decoder in (False, True):
        for batch in (1, 2):
            inputs = make_inputs(batch, decoder, torch.float32, "cpu")
            for name, make in (("forward", forward_fn), ("forward+backward", forward_backward_fn)):
                for mode in ("cold", "warm"):
                    if mode == "cold":
                        ours, ref = cold_side_by_side(make(msda.ms_deform_attn, inputs), make(ref_op, inputs), "cpu", rounds)
                    else:
                        ours, ref = side_by_side(make(msda.ms_deform_attn, inputs), make(ref_op, inputs), "cpu", warm_rounds)
                    row = {
                        "shape": "decoder Q=300" if decoder else ENCODER_NOTE, "batch": batch, "pass": name,
                        "mode": mode, "ours": ours, "ref": ref, "bytes": min_bytes(inputs, name != "forward"),
                    }
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    result["rows"].append(row)
    result["load_end"] = os.getloadavg()[0]
    return result


def cpu_isas_here() -> list[str]:
    """ISAs the CPU kernels can be built for on this machine: native, plus AVX2 under AVX-512."""
    native = torch.backends.cpu.get_cpu_capability()
    return ["avx2", "native"] if native == "AVX512" else ["native"]


def cpu_class(machine: str) -> str:
    """The CPU model of a machine_description() line (its text before the first comma)."""
    return machine.split(",", 1)[0].strip()


def isa_label(result: dict) -> str:
    """The ISA column: the instruction set the kernels were built for, marked when forced below the CPU's."""
    return f"{result['isa']} (forced)" if result.get("forced") else result["isa"]


def cpu_section(isas: list[str], quick: bool) -> list[str]:
    results = []
    for isa in isas:
        env = dict(os.environ)
        env.pop("MSDA_CPU_ISA", None)
        if isa == "avx2":
            env["MSDA_CPU_ISA"] = "avx2"
        command = [sys.executable, "-m", "benchmarks.bench_msda", "--cpu-worker"] + (["--quick"] if quick else [])
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = results[0]
    lines = [f"\n### CPU: {first['machine']}\n"]
    lines.append(f"Reference: {first['reference']}.\n")
    for r in results:
        forced = (
            f" (forced: `MSDA_CPU_ISA=avx2` on this {r['native']} CPU, standing in for an AVX2-only {cpu_class(first['machine'])})"
            if r.get("forced") else f" (the CPU's own: torch reports {r.get('native', '?')})"
        )
        lines.append(
            f"- {isa_label(r)} rows: kernels built for {r['isa']}{forced}; {r['implementation']}; copy bandwidth "
            f"measured in the same process (256 MiB copy, read + write) {r['bandwidth'] / 1e9:.1f} GB/s; 1-minute "
            f"load average {r['load_start']:.2f} before its rows, {r['load_end']:.2f} after."
        )
    lines.append("")
    header = "| ISA | shape | B | pass | mode | compiled (ms) | reference (ms) | speed-up | compiled: min bytes / time |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        for row in result["rows"]:
            line = (
                f"| {isa_label(result)} | {row['shape']} | {row['batch']} | {row['pass']} | {row['mode']} "
                f"| {row['ours'] * 1e3:.2f} | {row['ref'] * 1e3:.1f} | {row['ref'] / row['ours']:.1f}x "
                f"| {row['bytes'] / row['ours'] / 1e9:.1f} GB/s |"
            )
            print(line, flush=True)
            lines.append(line)
    return lines


def run(devices: list[str], quick: bool, isas: list[str]) -> str:
    rounds = 2 if quick else 5
    lines = []
    if "cpu" in devices:
        lines += cpu_section(isas, quick)
    for device in [d for d in devices if d == "cuda"]:
        implementation = msda.active_implementation(device)
        lines.append(f"\n### {device.upper()}: {torch.cuda.get_device_name()}\n")
        lines.append(f"Compiled op: `{implementation.name}` ({implementation.reason}).\n")
        bandwidth = copy_bandwidth(device)
        lines.append(f"Copy bandwidth measured in this run: {bandwidth / 1e9:.0f} GB/s.\n")
        header = "| shape | B | dtype | pass | compiled (ms) | reference (ms) | speed-up | compiled: min bytes / time, % of copy bw |"
        lines.append(header)
        lines.append("|" + "---|" * (header.count("|") - 1))
        for decoder in (False, True):
            for batch in (1, 2, 8):
                for dtype in (torch.float32, torch.bfloat16):
                    inputs = make_inputs(batch, decoder, dtype, device)
                    for name, make in (("forward", forward_fn), ("forward+backward", forward_backward_fn)):
                        ours, ref = side_by_side(
                            make(msda.ms_deform_attn, inputs), make(msda.ms_deform_attn_reference, inputs), device, rounds
                        )
                        achieved = min_bytes(inputs, name != "forward") / ours
                        row = (
                            f"| {'decoder Q=300' if decoder else ENCODER_NOTE} | {batch} | {str(dtype).split('.')[-1]} | {name} "
                            f"| {ours * 1e3:.2f} | {ref * 1e3:.1f} | {ref / ours:.1f}x "
                            f"| {achieved / 1e9:.0f} GB/s, {100 * achieved / bandwidth:.0f}% |"
                        )
                        print(row, flush=True)
                        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; do not write docs/benchmarks.md")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--isa", choices=["all", "native", "avx2"], default="all", help="CPU builds to measure")
    parser.add_argument("--cpu-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_worker:  # one ISA's CPU rows, as JSON on stdout
        print(json.dumps(cpu_rows(args.quick)))
        return
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    isas = cpu_isas_here() if args.isa == "all" else [args.isa]
    table = run(devices, args.quick, isas)
    if not args.quick:
        load = os.getloadavg()
        text = (
            "## msda op: compiled kernels vs the pure-PyTorch reference (`benchmarks/bench_msda.py`)\n\n"
            "Speed-up = reference time / compiled time, both measured in one run, in alternation. "
            "*cold*: median of nine rounds, each timing one reference call and then one compiled call (the "
            "reference evicts the caches, as other layers of a model do; see `cold_side_by_side`). "
            "*warm*: median over five rounds, each timing the reference once and, after two untimed calls, the "
            "compiled op three times back to back (see `side_by_side`). ISA: the instruction set the CPU kernels "
            "were built for (AVX2 rows: `MSDA_CPU_ISA=avx2`, checked with objdump to contain no AVX-512 register). "
            "'min bytes / time': the bytes a call must at least read and write (each tensor once) over its time. "
            "ISA '(forced)': kernels built for AVX2 on a CPU that has AVX-512, to stand in for an AVX2-only CPU of "
            "the same class. Targets on the 2-core CPU at the encoder shape, B = 1, cold, on AVX2 and AVX-512: forward >= 40x, "
            f"forward+backward >= 30x. Load average when the run ended: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} "
            "(1, 5, 15 min).\n"
            + table
        )
        # one section per CPU class, so a run on one machine keeps the tables of the others
        write_section(f"msda {cpu_class(machine_description())}", text)


if __name__ == "__main__":
    main()
