"""The ``MSDA_*`` environment variables msda reads, each checked against its valid values.

A value that is not one of a switch's valid values raises :class:`InvalidSwitch` (a ``ValueError``) naming the variable, the
value and the valid values (an unknown value used to be ignored, so a typo silently changed
nothing). ``import msda`` runs :func:`check_all`, so a bad value fails at once rather than at the
first call of the op; an ``MSDA_*`` name msda does not know (a misspelt switch) gets a warning that
lists the known ones.

    MSDA_FORCE_REFERENCE   flag; deprecated (see below)
    MSDA_BUILD_CUDA        flag; unset: compile the CUDA sources when torch sees a GPU
    MSDA_VERBOSE_BUILD     flag
    MSDA_CPU_ISA           ``avx2`` or ``native``
    MSDA_CPU_CACHE_MB      a whole number >= 0 (read by the C++ kernels, which check it too)
    MSDA_CACHE_DIR         a folder
    MSDA_TEST_CACHE_DIR    a folder (read by ``tests/conftest.py``)

A flag is ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case); an empty value
counts as unset.

``MSDA_FORCE_REFERENCE=1`` still makes the op compute the pure-PyTorch reference, with a
``FutureWarning``: the one documented way to run the reference is
``msda.MultiScaleDeformableAttention(use_reference=True)`` (``disable_custom_kernels=True`` in a
model config sets it on every attention), see ``docs/msda.md``.
"""

from __future__ import annotations

import os
import warnings

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
FLAG_VALUES = "'1', 'true', 'yes', 'on', '0', 'false', 'no', 'off' (any case), or unset/empty"
CPU_ISAS = ("avx2", "native")

FLAGS = ("MSDA_FORCE_REFERENCE", "MSDA_BUILD_CUDA", "MSDA_VERBOSE_BUILD")
FOLDERS = ("MSDA_CACHE_DIR", "MSDA_TEST_CACHE_DIR")
KNOWN = (*FLAGS, "MSDA_CPU_ISA", "MSDA_CPU_CACHE_MB", *FOLDERS)

FORCE_REFERENCE_DEPRECATION = (
    "MSDA_FORCE_REFERENCE is deprecated and will be removed. To run the pure-PyTorch reference, pass "
    "use_reference=True to msda.MultiScaleDeformableAttention (disable_custom_kernels=True in a model "
    "config sets it on every attention); code that calls the op function can call "
    "msda.ms_deform_attn_reference instead. Until then the variable still makes msda.ms_deform_attn "
    "compute the reference."
)


class InvalidSwitch(ValueError):
    """An ``MSDA_*`` variable holds a value outside its valid ones."""


def _raw(name: str) -> str | None:
    """The variable's value stripped, or None when it is unset or empty."""
    if not isinstance(name, str) or not name.startswith("MSDA_"):
        raise ValueError(f"name must be an MSDA_* variable name, got {name!r}")
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _invalid(name: str, value: str, valid: str) -> InvalidSwitch:
    return InvalidSwitch(f"msda: environment variable {name}={value!r} is not valid; valid values: {valid}")


def flag(name: str) -> bool | None:
    """``name`` as a flag: True, False, or None when unset; ``ValueError`` for any other value."""
    value = _raw(name)
    if value is None:
        return None
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise _invalid(name, value, FLAG_VALUES)


def cpu_isa() -> str | None:
    """``MSDA_CPU_ISA`` lower-cased (``"avx2"`` or ``"native"``), or None when unset."""
    value = _raw("MSDA_CPU_ISA")
    if value is None:
        return None
    if value.lower() not in CPU_ISAS:
        raise _invalid(
            "MSDA_CPU_ISA", value, "'avx2' (build the CPU kernels for AVX2 even on an AVX-512 CPU), 'native' (the default), or unset"
        )
    return value.lower()


def cpu_cache_mb() -> int | None:
    """``MSDA_CPU_CACHE_MB`` as an int >= 0, or None when unset."""
    value = _raw("MSDA_CPU_CACHE_MB")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 12):  # what the C++ side accepts
        raise _invalid("MSDA_CPU_CACHE_MB", value, "a whole number of MiB >= 0 (default 256; 0 keeps none), or unset")
    return int(value)


def folder(name: str) -> str | None:
    """A folder variable (``MSDA_CACHE_DIR``, ``MSDA_TEST_CACHE_DIR``), or None when unset."""
    if name not in FOLDERS:
        raise ValueError(f"name must be one of {FOLDERS}, got {name!r}")
    return _raw(name)  # any path; an unusable one is reported when the build tries to use it


def force_reference() -> bool:
    """Whether ``MSDA_FORCE_REFERENCE`` is on (deprecated; :func:`check_all` warns once)."""
    return flag("MSDA_FORCE_REFERENCE") is True


def check_all() -> None:
    """Check every ``MSDA_*`` variable: raise ``ValueError`` for a bad value of a known switch,
    warn about unknown ``MSDA_*`` names and about the deprecated ``MSDA_FORCE_REFERENCE``."""
    for name in FLAGS:
        flag(name)
    cpu_isa()
    cpu_cache_mb()
    for name in FOLDERS:
        folder(name)
    unknown = sorted(name for name in os.environ if name.startswith("MSDA_") and name not in KNOWN)
    if unknown:
        warnings.warn(
            f"msda: ignoring environment variable(s) {', '.join(unknown)}: msda reads only {', '.join(KNOWN)}",
            UserWarning,
            stacklevel=3,
        )
    if force_reference():
        warnings.warn(FORCE_REFERENCE_DEPRECATION, FutureWarning, stacklevel=3)
