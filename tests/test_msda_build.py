"""The JIT loader: cached builds, concurrent builds, fallback, and the CUDA sources' build check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "import warnings, torch, msda\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    info = msda.active_implementation('cpu')\n"
    "    v = torch.randn(1, 4, 1, 2); s = torch.tensor([[2, 2]]); i = torch.tensor([0])\n"
    "    out = msda.ms_deform_attn(v, s, i, torch.rand(1, 3, 1, 1, 1, 2), torch.rand(1, 3, 1, 1, 1))\n"
    "print('IMPL', info.name, '|', info.reason)\n"
    "print('WARNINGS', len([w for w in caught if 'falling back' in str(w.message)]))\n"
    "print('SHAPE', tuple(out.shape))\n"
)


def _probe(env_updates: dict[str, str], code: str = PROBE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", **env_updates}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_broken_compiler_falls_back_to_reference_with_one_warning(tmp_path):
    result = _probe({"MSDA_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "IMPL reference | compiling the extension failed" in result.stdout
    assert "WARNINGS 1" in result.stdout
    assert "SHAPE (1, 3, 2)" in result.stdout


def test_force_reference_needs_no_compiler(tmp_path):
    result = _probe({"MSDA_CACHE_DIR": str(tmp_path), "MSDA_FORCE_REFERENCE": "1", "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "IMPL reference | MSDA_FORCE_REFERENCE is set" in result.stdout
    assert "WARNINGS 0" in result.stdout


def test_concurrent_first_builds_share_one_cache_and_later_loads_do_not_compile(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", "MSDA_CACHE_DIR": str(tmp_path)}
    processes = [
        subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "IMPL compiled-cpu" in stdout, stdout + stderr
    # exactly one process compiled; the other waited on the lock and loaded the result
    assert sum("compiling the CPU extension" in stderr for _, stderr in outputs) == 1
    again = _probe({"MSDA_CACHE_DIR": str(tmp_path)})
    assert "IMPL compiled-cpu" in again.stdout and "compiling" not in again.stderr


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
def test_cuda_sources_compile_for_sm80_and_sm90():
    """Proves the .cu sources build even where no GPU can run them (cached across runs)."""
    code = (
        "import torch\nfrom msda import loader\n"
        "library = loader.build(with_cuda=True)\n"
        "print('BUILT', library, library.exists())\n"
    )
    result = _probe({"MSDA_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "8.0;9.0"}, code)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "BUILT" in result.stdout and result.stdout.strip().endswith("True"), result.stdout
