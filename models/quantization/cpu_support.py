"""What the int8 path needs from the machine, checked up front so that it fails in one clear line.

The int8 graph runs through ``torch.compile`` (inductor), which lowers quantized convolutions and
linear layers to oneDNN's int8 kernels and compiles the glue code with the C++ compiler. It needs an
x86-64 CPU with AVX2, a C++ compiler, and ``torchao`` (PyTorch's quantization library:
``pip install torchao``). VNNI (AVX512-VNNI, AVX-VNNI) is not required: with oneDNN restricted to AVX2
the ResNet-50 detector still ran 1.89x faster in int8 than in float32 (docs/benchmarks/int8.md).
"""

from __future__ import annotations

import importlib.util
import platform
import shutil

import torch

FAST_INT8 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class QuantizationUnsupported(RuntimeError):
    """This machine cannot run the int8 path; the message says what to use instead."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_summary() -> str:
    """One line: torch's CPU capability and the int8 instructions present (``AVX512 + avx512_vnni``)."""
    capability = torch.backends.cpu.get_cpu_capability()
    fast = sorted(FAST_INT8 & cpu_flags())
    return f"{capability}" + (f" + {', '.join(fast)}" if fast else " (no VNNI)")


def check_cpu_support(compile: bool = True) -> None:
    """Raise :class:`QuantizationUnsupported` when the int8 path cannot run here.

    ``compile=False`` (the graph run eagerly, for checking numerics) needs only ``torchao``.
    """
    if importlib.util.find_spec("torchao") is None:
        raise QuantizationUnsupported("int8 quantization needs torchao (pip install torchao); without it, run the float32 model")
    if not compile:
        return
    machine = platform.machine().lower()
    capability = torch.backends.cpu.get_cpu_capability()
    if machine not in ("x86_64", "amd64") or capability not in ("AVX2", "AVX512", "AMX"):
        raise QuantizationUnsupported(
            f"int8 quantization needs an x86-64 CPU with AVX2 (this one: {machine}, {capability}); run the float32 model instead"
        )
    from torch._inductor import cpp_builder

    compiler = cpp_builder.get_cpp_compiler() if hasattr(cpp_builder, "get_cpp_compiler") else "g++"
    if shutil.which(compiler) is None:
        raise QuantizationUnsupported(
            f"int8 quantization compiles its graph with inductor, which needs a C++ compiler ({compiler!r} not found; install g++ or set CXX); "
            "run the float32 model instead"
        )
