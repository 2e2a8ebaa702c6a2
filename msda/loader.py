"""JIT build and load of the C++/CUDA extension, with a clear fallback to the reference.

The first call compiles ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja) into a cache
folder and logs one line saying so; later processes load the cached library in well under a
second. An exclusive file lock serialises concurrent builds, so two processes starting at once
never see a half-written library.

Environment variables:
    MSDA_FORCE_REFERENCE=1   never compile; use the pure-PyTorch reference everywhere.
    MSDA_BUILD_CUDA=1        compile the CUDA sources even when torch sees no GPU (build check).
    MSDA_BUILD_CUDA=0        never compile the CUDA sources.
    MSDA_CACHE_DIR=PATH      where compiled libraries are kept (default ~/.cache/msda).
    MSDA_VERBOSE_BUILD=1     show the compiler's output.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import torch

logger = logging.getLogger("msda")

_PACKAGE_DIR = Path(__file__).resolve().parent


def source_dir() -> Path:
    """Folder holding the C++/CUDA sources: inside the installed package, or the repository's ``csrc/``."""
    for candidate in (_PACKAGE_DIR / "csrc", _PACKAGE_DIR.parent / "csrc"):
        if (candidate / "ms_deform_attn.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"msda C++ sources not found next to {_PACKAGE_DIR} (looked for csrc/ms_deform_attn.cpp)")


def _env_flag(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or value == "" else value.strip().lower()


def _env_true(name: str) -> bool:
    return _env_flag(name) in ("1", "true", "yes")


def _cpu_flags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-fno-trapping-math"]  # the C++ standard is torch's choice (C++20 for torch >= 2.10)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]
    if capability == "AVX512":  # 32 vector registers for the fp32 kernels' 8-lane vectors: 1.1x forward
        flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"]
    return flags


def _cuda_arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "8.0;9.0"


def wants_cuda() -> bool:
    """Whether the CUDA sources should be compiled: a visible GPU, or ``MSDA_BUILD_CUDA=1``."""
    flag = _env_flag("MSDA_BUILD_CUDA")
    if flag in ("0", "false", "no"):
        return False
    if _env_true("MSDA_BUILD_CUDA"):
        return True
    return torch.cuda.is_available()


def _sources(with_cuda: bool) -> list[Path]:
    root = source_dir()
    sources = [root / "ms_deform_attn.cpp", *sorted((root / "cpu").glob("*.cpp"))]
    if with_cuda:
        sources += sorted((root / "cuda").glob("*.cu"))
    return sources


def _build_name(sources: list[Path], cflags: list[str], with_cuda: bool) -> str:
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for header in sorted(source_dir().rglob("*.h")):
        digest.update(header.read_bytes())
    digest.update(" ".join(cflags).encode())
    digest.update(torch.__version__.encode())
    if with_cuda:
        digest.update(_cuda_arch_list().encode())
    kind = "cuda" if with_cuda else "cpu"
    return f"msda_{kind}_{digest.hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(os.environ.get("MSDA_CACHE_DIR", Path.home() / ".cache" / "msda"))


def build(with_cuda: bool, build_root: Path | None = None) -> Path:
    """Compile (or reuse) the extension and load it into this process; return the library's path.

    The library's name carries a hash of the sources, flags and torch version, so an existing file
    is current and is loaded directly (no compiler, no ninja). Raises whatever the compiler raises;
    :func:`ensure_loaded` turns that into a fallback.
    """
    sources = _sources(with_cuda)
    cflags = _cpu_flags()
    name = _build_name(sources, cflags, with_cuda)
    build_dir = (build_root or cache_dir()) / name
    library = build_dir / f"{name}.so"
    # written only after a build finished and loaded, so a library that a concurrent build is still
    # linking is never picked up
    complete = build_dir / "complete"
    if complete.exists():
        torch.ops.load_library(str(library))
        return library
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS even if this process dies
        if complete.exists():  # another process built it while we waited
            torch.ops.load_library(str(library))
            return library
        wait = "several minutes" if with_cuda else "about a minute"
        logger.warning("msda: compiling the %s extension on first use (%s, cached in %s)", "CPU+CUDA" if with_cuda else "CPU", wait, build_dir)
        _compile(name, sources, cflags, build_dir, with_cuda)
        complete.touch()
    return library


def _compile(name: str, sources: list[Path], cflags: list[str], build_dir: Path, with_cuda: bool) -> None:
    """Run the JIT build (ninja) into ``build_dir`` and load the result."""
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
        # torch guesses CUDA_HOME from the nvcc on PATH, which is wrong on some installs
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils import cpp_extension

    extra: dict = {}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _cuda_arch_list())
        extra["extra_cuda_cflags"] = ["-O3"]
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(source_dir())],
        build_directory=str(build_dir),
        is_python_module=False,
        with_cuda=with_cuda,
        verbose=_env_true("MSDA_VERBOSE_BUILD"),
        **extra,
    )


@dataclasses.dataclass(frozen=True)
class Implementation:
    """Which implementation of the op serves a device, and why.

    ``name`` is ``"compiled-cpu"``, ``"compiled-cuda"`` or ``"reference"``.
    """

    name: str
    reason: str


_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "cpu": False, "cuda": False, "reason": "not loaded yet"}


def ensure_loaded() -> None:
    """Load the compiled op once per process; on failure, warn once and record why."""
    if _state["tried"]:
        return
    with _lock:
        if _state["tried"]:
            return
        if _env_true("MSDA_FORCE_REFERENCE"):
            _state.update(tried=True, reason="MSDA_FORCE_REFERENCE is set")
            return
        with_cuda = wants_cuda()
        try:
            build(with_cuda)
            _state.update(cpu=True, cuda=with_cuda, reason=f"compiled from {source_dir()}")
        except Exception as error:  # noqa: BLE001 - any build failure means: use the reference
            cause = _first_error_line(error)
            _state.update(reason=f"compiling the extension failed ({cause})")
            warnings.warn(
                f"msda: falling back to the pure-PyTorch reference, {_state['reason']}. "
                "Install a C++ compiler and ninja for the fast kernels, or set MSDA_FORCE_REFERENCE=1 to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        _state["tried"] = True


def _first_error_line(error: BaseException) -> str:
    """The compiler's first ``error:`` line if there is one, else the exception's last line."""
    text = str(error).strip()
    for candidate in (error.__cause__, error.__context__):
        if candidate is not None and hasattr(candidate, "output") and candidate.output:
            text = candidate.output.decode(errors="replace") if isinstance(candidate.output, bytes) else str(candidate.output)
    lines = text.splitlines()
    errors = [line.strip() for line in lines if "error" in line.lower() and "build stopped" not in line]
    chosen = errors[0] if errors else (lines[-1] if lines else "")
    return f"{type(error).__name__}: {chosen[:300]}"


def loaded(device_type: str) -> bool:
    """Whether the compiled op for ``device_type`` is loaded already (never builds anything)."""
    return bool(_state.get(device_type, False))


def is_compiled(device_type: str) -> bool:
    """Whether the compiled op serves ``device_type``; loads (on first use: builds) it."""
    ensure_loaded()
    return loaded(device_type)


def active_implementation(device: str | torch.device = "cpu") -> Implementation:
    """Say which implementation :func:`msda.ms_deform_attn` uses on ``device`` and why."""
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        return Implementation("reference", f"no compiled kernel for device type {device_type!r}")
    if is_compiled(device_type):
        return Implementation(f"compiled-{device_type}", str(_state["reason"]))
    if device_type == "cuda" and _state["cpu"]:
        reason = "the CUDA sources were not compiled (torch sees no GPU and MSDA_BUILD_CUDA is not 1)"
        return Implementation("reference", reason)
    return Implementation("reference", str(_state["reason"]))
