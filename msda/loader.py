"""JIT build and load of the C++/CUDA extension, with a clear fallback to the reference.

``import msda`` loads a cached library when one is there and verifies (size and sha256 recorded at
build time, see :mod:`msda.build_cache`); it never compiles. Otherwise the first call of the op
compiles ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja) into a cache folder, printing a
progress line every 15 s (the first CPU build takes up to a few minutes on a small machine). An exclusive
file lock serialises concurrent builds; a process that waits for another's build says so every
15 s. A broken cached build is rebuilt; when no build is possible the op falls back to the
reference with one warning whose advice fits the cause.

Environment variables (checked by :mod:`msda.environment`; a value outside the valid ones raises):
    MSDA_BUILD_CUDA=1        compile the CUDA sources even when torch sees no GPU (build check).
    MSDA_BUILD_CUDA=0        never compile the CUDA sources.
    MSDA_CACHE_DIR=PATH      where compiled libraries are kept (default ~/.cache/msda).
    MSDA_VERBOSE_BUILD=1     show the compiler's output.
    MSDA_CPU_ISA=avx2        build the CPU kernels for AVX2 even where torch reports AVX-512 (to measure
                             AVX2-only machines; the flags are part of the cache entry's name).
    MSDA_FORCE_REFERENCE=1   deprecated: never compile; the op computes the pure-PyTorch reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from msda import build_cache, environment
from msda.build_cache import Entry

logger = logging.getLogger("msda")

_PACKAGE_DIR = Path(__file__).resolve().parent
HEARTBEAT_SECONDS = 15.0
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)  # progress lines while compiling or waiting for another process's build


class BuildUnavailable(RuntimeError):
    """No compiled library can be had here; ``reason`` says why, ``advice`` what to do."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.advice = advice


def source_dir() -> Path:
    """Folder holding the C++/CUDA sources: inside the installed package, or the repository's ``csrc/``."""
    for candidate in (_PACKAGE_DIR / "csrc", _PACKAGE_DIR.parent / "csrc"):
        if (candidate / "ms_deform_attn.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"msda C++ sources not found next to {_PACKAGE_DIR} (looked for csrc/ms_deform_attn.cpp)")


def _cpu_flags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-fno-trapping-math"]  # the C++ standard is torch's choice (C++20 for torch >= 2.10)
    capability = cpu_isa()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]
    if capability == "AVX512":  # 32 vector registers for the fp32 kernels' 8-lane vectors: 1.1x forward
        flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"]
    return flags


def cpu_isa() -> str:
    """The instruction set the CPU kernels are built for: torch's CPU capability ("AVX512", "AVX2",
    "DEFAULT", ...), capped at AVX2 when ``MSDA_CPU_ISA=avx2``."""
    capability = torch.backends.cpu.get_cpu_capability()
    if environment.cpu_isa() == "avx2" and capability == "AVX512":
        return "AVX2"
    return capability


def _cuda_arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "8.0;9.0"


def wants_cuda() -> bool:
    """Whether the CUDA sources should be compiled: a visible GPU, or ``MSDA_BUILD_CUDA=1``."""
    flag = environment.flag("MSDA_BUILD_CUDA")
    return torch.cuda.is_available() if flag is None else flag


def _sources(with_cuda: bool, cpu_kernels: bool = True) -> list[Path]:
    root = source_dir()
    sources = [root / "ms_deform_attn.cpp"]
    if cpu_kernels:
        sources += sorted((root / "cpu").glob("*.cpp"))
    if with_cuda:
        sources += sorted((root / "cuda").glob("*.cu"))
    return sources


def _build_name(sources: list[Path], cflags: list[str], with_cuda: bool, cpu_kernels: bool = True) -> str:
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
    kind = ("cuda" if cpu_kernels else "cudaonly") if with_cuda else "cpu"
    return f"msda_{kind}_{digest.hexdigest()[:12]}"


def cache_dir() -> Path:
    return Path(environment.folder("MSDA_CACHE_DIR") or Path.home() / ".cache" / "msda")


def _plan(with_cuda: bool, build_root: Path | None, cpu_kernels: bool = True) -> tuple[Entry, list[Path], list[str]]:
    sources = _sources(with_cuda, cpu_kernels)
    cflags = _cpu_flags()
    name = _build_name(sources, cflags, with_cuda, cpu_kernels)
    return Entry((build_root or cache_dir()) / name, name), sources, cflags


def _load(entry: Entry) -> None:
    torch.ops.load_library(str(entry.library))


def build(with_cuda: bool, build_root: Path | None = None, cpu_kernels: bool = True) -> Path:
    """Compile (or reuse) the extension and load it into this process; return the library's path.

    The library's name carries a hash of the sources, flags and torch version; a cached library is
    loaded only after its size and sha256 match what its build recorded, and is rebuilt otherwise.
    ``cpu_kernels=False`` builds the CUDA sources alone (the build check of a machine without GPU).
    Raises :class:`BuildUnavailable` when the cache folder is not writable or no compiler or ninja
    is found, or whatever the compiler raises.
    """
    entry, sources, cflags = _plan(with_cuda, build_root, cpu_kernels)
    load_failure = None  # a verified library that dlopen refuses (say, built against another torch) is rebuilt
    try:
        if build_cache.problem(entry) is None:
            try:
                _load(entry)
                return entry.library
            except OSError as error:
                load_failure = f"loading it failed ({error})"
        entry.folder.mkdir(parents=True, exist_ok=True)
        lock = open(entry.folder / build_cache.LOCK, "a")  # noqa: SIM115 - held for the whole build
    except OSError as error:
        if error.errno in _UNWRITABLE:
            raise BuildUnavailable(
                f"the cache folder {entry.folder.parent} is not writable ({type(error).__name__}: {error.strerror})",
                "Set MSDA_CACHE_DIR to a writable folder.",
            ) from error
        raise
    with lock:
        _acquire(lock, entry)  # released by the OS even if this process dies
        problem = build_cache.problem(entry) or load_failure
        if problem is None:  # another process built it while we waited
            _load(entry)
            return entry.library
        if problem != build_cache.NO_BUILD:
            logger.warning("msda: the cached build in %s cannot be used: %s; rebuilding it", entry.folder, problem)
            build_cache.clear(entry)
        _check_tools()
        kind = "CPU+CUDA" if with_cuda and cpu_kernels else ("CUDA" if with_cuda else "CPU")
        logger.warning(
            "msda: compiling the %s extension on first use; this takes up to a few minutes%s, once; cached in %s",
            kind, " (more with CUDA)" if with_cuda else "", entry.folder,
        )
        with _heartbeat(f"msda: still compiling the {kind} extension ({{seconds}} s; the first build takes up to a few minutes)"):
            _compile(entry, sources, cflags, with_cuda)
        build_cache.record_complete(entry)
    return entry.library


def _acquire(lock, entry: Entry) -> None:
    """Take the build lock; while another process holds it, say so every HEARTBEAT_SECONDS."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    logger.warning("msda: another process is building %s; waiting for it", entry.folder)
    start = time.monotonic()
    next_beat = start + HEARTBEAT_SECONDS
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if now >= next_beat:
                logger.warning("msda: still waiting for another process's build of %s (%d s)", entry.folder, now - start)
                next_beat += HEARTBEAT_SECONDS
            time.sleep(min(0.5, HEARTBEAT_SECONDS / 4))


@contextlib.contextmanager
def _heartbeat(template: str) -> Iterator[None]:
    """Log ``template`` (with ``{seconds}``) every HEARTBEAT_SECONDS until the block ends."""
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            logger.warning(template.format(seconds=int(time.monotonic() - start)))

    thread = threading.Thread(target=beat, name="msda-build-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _check_tools() -> None:
    """Raise :class:`BuildUnavailable` when the compiler or ninja is missing (before trying)."""
    venv_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
        # pip's ninja lives next to this interpreter, which is not on PATH unless the venv is active
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    compiler = os.environ.get("CXX") or "c++"
    words = shlex.split(compiler) or ["c++"]
    if shutil.which(words[0]) is None:
        raise BuildUnavailable(f"no C++ compiler found (CXX={compiler})", "Install a C++ compiler (g++ or clang++) and ninja for the fast kernels.")
    if shutil.which("ninja") is None:
        raise BuildUnavailable("ninja is not installed", "Install ninja (pip install ninja) for the fast kernels.")


class _DropNoCudaRuntime(logging.Filter):
    """torch.utils.cpp_extension warns "No CUDA runtime is found" when imported on a machine without
    GPU; that is expected, and alarming, when we build the CPU kernels only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def import_cpp_extension(with_cuda: bool):
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime" warning when only the
    CPU kernels are built."""
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    quiet = _DropNoCudaRuntime()
    if not with_cuda:
        extension_logger.addFilter(quiet)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_logger.removeFilter(quiet)
    return cpp_extension


def _compile(entry: Entry, sources: list[Path], cflags: list[str], with_cuda: bool) -> None:
    """Run the JIT build (ninja) into the entry's folder and load the result."""
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
        # torch guesses CUDA_HOME from the nvcc on PATH, which is wrong on some installs
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    cpp_extension = import_cpp_extension(with_cuda)
    extra: dict = {}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _cuda_arch_list())
        extra["extra_cuda_cflags"] = ["-O3"]
    cpp_extension.load(
        name=entry.name,
        sources=[str(s) for s in sources],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(source_dir())],
        build_directory=str(entry.folder),
        is_python_module=False,
        with_cuda=with_cuda,
        verbose=environment.flag("MSDA_VERBOSE_BUILD") is True,
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


def load_cached() -> bool:
    """At import: load a verified cached build if there is one; never compile, never warn."""
    if environment.force_reference():
        return False
    with _lock:
        if _state["tried"]:
            return bool(_state["cpu"])
        try:
            with_cuda = wants_cuda()
            entry, _, _ = _plan(with_cuda, None)
            if build_cache.problem(entry) is not None:
                return False
            _load(entry)
        except environment.InvalidSwitch:
            raise
        except Exception:  # noqa: BLE001 - the first call will rebuild and report
            return False
        _state.update(tried=True, cpu=True, cuda=with_cuda, library=entry.library, reason=f"compiled from {source_dir()} (cached in {entry.folder})")
        return True


def ensure_loaded() -> None:
    """Load the compiled op once per process; on failure, warn once and record why."""
    if _state["tried"]:
        return
    with _lock:
        if _state["tried"]:
            return
        if environment.force_reference():
            _state.update(tried=True, reason="MSDA_FORCE_REFERENCE is set (deprecated)")
            return
        with_cuda = wants_cuda()
        try:
            library = build(with_cuda)
            _state.update(cpu=True, cuda=with_cuda, library=library, reason=f"compiled from {source_dir()} (cached in {library.parent})")
        except BuildUnavailable as error:
            _fall_back(error.reason, error.advice)
        except environment.InvalidSwitch:
            raise
        except Exception as error:  # noqa: BLE001 - any build failure means: use the reference
            _fall_back(
                f"compiling the extension failed ({_first_error_line(error)})",
                "Set MSDA_VERBOSE_BUILD=1 to see the compiler's output.",
            )
        _state["tried"] = True


def _fall_back(reason: str, advice: str) -> None:
    _state["reason"] = reason
    warnings.warn(
        f"msda: falling back to the pure-PyTorch reference: {reason}. {advice} "
        "To run the reference without trying to compile, pass use_reference=True to "
        "msda.MultiScaleDeformableAttention (disable_custom_kernels=True in a model config).",
        RuntimeWarning,
        stacklevel=4,
    )


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


def loaded_library() -> Path | None:
    """Path of the compiled library this process loaded, if any (never builds anything)."""
    library = _state.get("library")
    return library if isinstance(library, Path) else None


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
