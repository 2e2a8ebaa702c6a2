"""The JIT loader: verified caches, rebuilds, advice that fits the cause, heartbeats, locking, and the
CUDA sources' build check.

Each case runs in a fresh process with its own temporary MSDA_CACHE_DIR. Where a case needs a
build, the process's compiler is replaced by a copy of the library the test session already built
(``fake_compile``), so the loader's logic is tested without paying for a compile each time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msda import build_cache, loader
from msda.build_cache import Entry
from tests.msda_inputs import ROOT, fake_compile, run_fresh

PROBE = (
    "import warnings, torch, msda\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    info = msda.active_implementation('cpu')\n"
    "    v = torch.randn(1, 4, 1, 2); s = torch.tensor([[2, 2]]); i = torch.tensor([0])\n"
    "    out = msda.ms_deform_attn(v, s, i, torch.rand(1, 3, 1, 1, 1, 2), torch.rand(1, 3, 1, 1, 1))\n"
    "print('IMPL', info.name, '|', info.reason)\n"
    "for w in caught:\n"
    "    if 'falling back' in str(w.message): print('WARNING', w.message)\n"
    "print('WARNINGS', len([w for w in caught if 'falling back' in str(w.message)]))\n"
    "print('SHAPE', tuple(out.shape))\n"
)


def _entry(cache: Path) -> Entry:
    """The entry (folder and library name) the loader uses for the CPU build under ``cache``."""
    return loader._plan(False, cache)[0]


def _install(good: Path, cache: Path) -> Entry:
    """Put a verified copy of the session's library into ``cache``, as a finished build leaves it."""
    entry = _entry(cache)
    entry.folder.mkdir(parents=True)
    shutil.copyfile(good, entry.library)
    build_cache.record_complete(entry)
    return entry


def test_missing_compiler_falls_back_with_compiler_advice(tmp_path):
    result = run_fresh(PROBE, {"MSDA_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "IMPL reference | no C++ compiler found (CXX=/nonexistent/c++)" in result.stdout
    assert "WARNINGS 1" in result.stdout and "Install a C++ compiler" in result.stdout
    assert "SHAPE (1, 3, 2)" in result.stdout


def test_force_reference_needs_no_compiler(tmp_path):
    result = run_fresh(PROBE, {"MSDA_CACHE_DIR": str(tmp_path), "MSDA_FORCE_REFERENCE": "1", "CXX": "/nonexistent/c++"})
    assert result.returncode == 0, result.stderr
    assert "IMPL reference | MSDA_FORCE_REFERENCE is set" in result.stdout
    assert "WARNINGS 0" in result.stdout  # no fallback warning; the deprecation instead, naming the replacement
    assert "FutureWarning: MSDA_FORCE_REFERENCE is deprecated" in result.stderr and "use_reference=True" in result.stderr


def _damage(kind: str, library: Path, marker: Path) -> str:
    """Damage the cached build as ``kind`` says; return the reason the loader should give."""
    if kind == "truncated":  # what killed `detect` with SIGBUS
        library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
        return "truncated or replaced"
    if kind == "random-bytes":  # the same size, other content
        library.write_bytes(os.urandom(library.stat().st_size))
        return "sha256 differs"
    if kind == "missing-library":
        library.unlink()
        return "the library is missing"
    marker.write_text("")  # kind == "old-marker": an empty marker, as msda wrote before checksums
    return "no size and checksum"


@pytest.mark.parametrize("kind", ["truncated", "random-bytes", "missing-library", "old-marker"])
def test_damaged_cache_is_rebuilt_never_trusted(kind, msda_cpu_library, tmp_path):
    entry = _install(msda_cpu_library, tmp_path)
    reason = _damage(kind, entry.library, entry.marker)
    result = run_fresh(fake_compile(msda_cpu_library) + PROBE, {"MSDA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]  # no Bus error (exit 135)
    assert "cannot be used" in result.stderr and reason in result.stderr and "rebuilding it" in result.stderr
    assert "FAKE-COMPILED" in result.stdout and "IMPL compiled-cpu" in result.stdout and "WARNINGS 0" in result.stdout
    assert build_cache.problem(entry) is None  # the rebuilt entry verifies
    if kind == "truncated":  # and the next process loads it at import, without building
        again = run_fresh(fake_compile(msda_cpu_library) + PROBE, {"MSDA_CACHE_DIR": str(tmp_path)})
        assert "IMPL compiled-cpu" in again.stdout and "FAKE-COMPILED" not in again.stdout and "compiling" not in again.stderr


def test_unwritable_cache_gives_cache_advice(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    command = [sys.executable, "-c", PROBE]
    if os.geteuid() == 0:  # root writes anywhere: run the probe as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv; cannot make a folder unwritable")
        tmp_path.chmod(0o755)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", "MSDA_CACHE_DIR": str(cache / "msda"), "HOME": str(tmp_path)}
    if command[0] == "setpriv":  # nobody must be able to read this interpreter's packages and the checkout
        reachable = subprocess.run([*command[:5], "-c", "import torch, msda"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if reachable.returncode != 0:
            pytest.skip(f"user nobody cannot import torch and msda here (a parent folder of {sys.executable} or {ROOT} is private): "
                        f"{reachable.stderr.strip().splitlines()[-1:]}")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPL reference | the cache folder" in result.stdout and "is not writable" in result.stdout
    assert "Set MSDA_CACHE_DIR to a writable folder" in result.stdout
    assert "compiler" not in result.stdout


def test_concurrent_first_builds_share_one_build_and_say_what_they_do(msda_cpu_library, tmp_path):
    code = fake_compile(msda_cpu_library, delay=2.0, heartbeat=0.3) + PROBE
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", "MSDA_CACHE_DIR": str(tmp_path)}
    processes = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "IMPL compiled-cpu" in stdout, stdout + stderr
    builder = [stderr for stdout, stderr in outputs if "FAKE-COMPILED" in stdout]
    waiter = [stderr for stdout, stderr in outputs if "FAKE-COMPILED" not in stdout]
    assert len(builder) == 1 and len(waiter) == 1  # exactly one process compiled
    assert "compiling the CPU extension on first use" in builder[0] and "still compiling the CPU extension" in builder[0]
    assert "another process is building" in waiter[0] and "still waiting for another process's build of" in waiter[0]


def test_waiting_for_a_held_build_lock_shows_a_heartbeat(msda_cpu_library, tmp_path):
    entry = _entry(tmp_path / "cache")
    entry.folder.mkdir(parents=True)
    log = tmp_path / "stderr.txt"
    with open(entry.folder / "build.lock", "a") as lock, open(log, "w") as stderr:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is building
        process = subprocess.Popen(
            [sys.executable, "-c", fake_compile(msda_cpu_library, heartbeat=0.3) + PROBE],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "MSDA_BUILD_CUDA": "0", "MSDA_CACHE_DIR": str(tmp_path / "cache")},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        deadline = time.monotonic() + 300
        while "still waiting for another process's build of" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        shutil.copyfile(msda_cpu_library, entry.library)  # ... and finishes its build
        build_cache.record_complete(entry)
    stdout, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log.read_text()
    assert "another process is building" in log.read_text() and "still waiting for another process's build of" in log.read_text()
    assert "IMPL compiled-cpu" in stdout and "FAKE-COMPILED" not in stdout  # loaded the other build


def test_no_cuda_runtime_warning_silenced_when_building_cpu_only():
    code = "import sys, torch\nfrom msda import loader\nprint('CUDA', torch.cuda.is_available())\nloader.import_cpp_extension(with_cuda=bool(int(sys.argv[1])))\n"
    outputs = {}
    for with_cuda in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_HOME": "/usr/local/cuda"}
        result = subprocess.run([sys.executable, "-c", code, str(with_cuda)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs[with_cuda] = result
    if "CUDA True" in outputs[0].stdout or not Path("/usr/local/cuda").exists():
        pytest.skip("the warning appears only without a GPU and with a CUDA toolkit installed")
    assert "No CUDA runtime is found" in outputs[1].stderr  # the warning exists here ...
    assert "No CUDA runtime is found" not in outputs[0].stderr  # ... and the CPU-only build hides it


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
def test_cuda_sources_compile_for_one_architecture():
    """Proves the .cu sources build where no GPU can run them: CUDA sources alone (the CPU kernels
    are the session's CPU build), for sm_80 only, cached in the test cache across sessions."""
    code = (
        "from msda import loader\n"
        "library = loader.build(with_cuda=True, cpu_kernels=False)\n"
        "print('BUILT', library, library.exists())\n"
    )
    result = run_fresh(code, {"MSDA_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "8.0"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "BUILT" in result.stdout and result.stdout.strip().endswith("True"), result.stdout
