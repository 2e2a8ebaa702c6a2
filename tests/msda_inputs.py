"""Random inputs for the msda op tests (shared by the op, module and CUDA tests), and fresh-process helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def level_tensors(shapes: list[tuple[int, int]], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """spatial_shapes [L, 2] and level_start_index [L] for the given (H, W) levels."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def random_inputs(
    batch: int,
    shapes: list[tuple[int, int]],
    queries: int,
    heads: int,
    channels: int,
    points: int,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
    outside: float = 0.15,
) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights.

    Locations spread ``outside`` beyond [0, 1] on each side, so some corners fall off the map, and
    are nudged away from integer pixel positions, where the location gradient jumps.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tensors(shapes, device)
    total = int(spatial_shapes.prod(1).sum())
    levels = len(shapes)
    value = torch.randn(batch, total, heads, channels, generator=generator, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    locations = locations * (1 + 2 * outside) - outside
    # keep the pixel coordinate's fractional part inside [0.1, 0.9]
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)[None, None, None, :, None, :]
    pixel = locations * size - 0.5
    fraction = pixel - pixel.floor()
    pixel = pixel.floor() + 0.1 + 0.8 * fraction
    locations = (pixel + 0.5) / size
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    as_dtype = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return as_dtype(value), spatial_shapes, level_start_index, as_dtype(locations), as_dtype(weights)


def output_and_grads(fn, inputs, grad_output: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``fn`` (the op or the reference) on ``inputs``; return its output and the gradients for
    value, sampling_locations and attention_weights under ``grad_output``."""
    value, shapes, starts, locations, weights = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    output = fn(value, shapes, starts, locations, weights)
    return output.detach(), torch.autograd.grad(output, (value, locations, weights), grad_output)


ROOT = Path(__file__).resolve().parents[1]

# A tiny valid call: value, shapes, starts, locations, weights (fp32, two levels, one int32 level set).
SMALL_CALL = (
    "import torch\n"
    "g = torch.Generator().manual_seed(0)\n"
    "v = torch.randn(2, 26, 2, 4, generator=g)\n"
    "s = torch.tensor([[4, 5], [2, 3]]); i = torch.tensor([0, 20])\n"
    "l = torch.rand(2, 6, 2, 2, 3, 2, generator=g); w = torch.rand(2, 6, 2, 2, 3, generator=g)\n"
)


def run_fresh(code: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (the repository importable, CUDA sources not built)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def fake_compile(good_library: Path, delay: float = 0.0, heartbeat: float | None = None) -> str:
    """Code that replaces the compiler of a fresh process by a copy of an already built library
    (after ``delay`` seconds), so the loader's logic around a build is tested without compiling."""
    lines = [
        "import shutil as _shutil, time as _time, torch as _torch",
        "from msda import loader as _loader",
        "def _fake_compile(entry, sources, cflags, with_cuda):",
        f"    _time.sleep({delay})",
        f"    _shutil.copyfile({str(good_library)!r}, entry.library)",
        "    _torch.ops.load_library(str(entry.library))",
        "    print('FAKE-COMPILED', flush=True)",
        "_loader._compile = _fake_compile",
    ]
    if heartbeat is not None:
        lines.append(f"_loader.HEARTBEAT_SECONDS = {heartbeat}")
    return "\n".join(lines) + "\n"
