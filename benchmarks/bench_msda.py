"""Times the compiled msda op against the pure-PyTorch reference at Deformable DETR's shapes.

Encoder: an 800x1066 image gives levels 100x134, 50x67, 25x34, 13x17 (S = Q = 17,821), M = 8 heads,
D = 32 channels, P = 4 points; decoder: Q = 300. Locations are realistic: encoder queries sample
around their own pixel, decoder queries around random reference points, with offsets of a few
pixels (the paper's initial ring plus noise).

CPU rows: forward and forward+backward, B = 1 and 2, fp32. CUDA rows (when torch sees a GPU):
B = 1, 2, 8, fp32 and bf16, plus the fewest bytes each call must move divided by its time, as a
fraction of the copy bandwidth measured in the same run.

    python -m benchmarks.bench_msda            # prints the table, updates docs/benchmarks.md
    python -m benchmarks.bench_msda --quick    # fewer repetitions, no file written
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import msda
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


def run(devices: list[str], quick: bool) -> str:
    rounds = 2 if quick else 5
    lines = []
    for device in devices:
        implementation = msda.active_implementation(device)
        lines.append(f"\n### {device.upper()}: {machine_description() if device == 'cpu' else torch.cuda.get_device_name()}\n")
        lines.append(f"Compiled op: `{implementation.name}` ({implementation.reason}).\n")
        bandwidth = copy_bandwidth(device) if device == "cuda" else None
        if bandwidth:
            lines.append(f"Copy bandwidth measured in this run: {bandwidth / 1e9:.0f} GB/s.\n")
        header = "| shape | B | dtype | pass | compiled (ms) | reference (ms) | speed-up |" + (" compiled: min bytes / time, % of copy bw |" if bandwidth else "")
        lines.append(header)
        lines.append("|" + "---|" * (header.count("|") - 1))
        batches = (1, 2, 8) if device == "cuda" else (1, 2)
        dtypes = (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)
        for decoder in (False, True):
            for batch in batches:
                for dtype in dtypes:
                    inputs = make_inputs(batch, decoder, dtype, device)
                    for name, make in (("forward", forward_fn), ("forward+backward", forward_backward_fn)):
                        ours, ref = side_by_side(
                            make(msda.ms_deform_attn, inputs), make(msda.ms_deform_attn_reference, inputs), device, rounds
                        )
                        row = (
                            f"| {'decoder Q=300' if decoder else 'encoder Q=17821'} | {batch} | {str(dtype).split('.')[-1]} | {name} "
                            f"| {ours * 1e3:.2f} | {ref * 1e3:.1f} | {ref / ours:.1f}x |"
                        )
                        if bandwidth:
                            achieved = min_bytes(inputs, name != "forward") / ours
                            row += f" {achieved / 1e9:.0f} GB/s, {100 * achieved / bandwidth:.0f}% |"
                        print(row, flush=True)
                        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; do not write docs/benchmarks.md")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    table = run(devices, args.quick)
    if not args.quick:
        text = (
            "## msda op: compiled kernels vs the pure-PyTorch reference (`benchmarks/bench_msda.py`)\n\n"
            "Median wall time per call after five warm-up calls; the speed-up is reference time / compiled time, "
            "measured in alternation in one run (each of five rounds times the reference once and, after two "
            "untimed calls, the compiled op three times; see `side_by_side`). Targets on the 2-core CPU at the encoder shape: forward >= 40x, forward+backward >= 30x.\n"
            + table
        )
        write_section("msda", text)


if __name__ == "__main__":
    main()
