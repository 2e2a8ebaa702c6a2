"""The MSDA_* environment switches: a value outside the valid ones raises, naming the variable, the
value and the valid values; an unknown MSDA_* name warns; MSDA_FORCE_REFERENCE is deprecated."""

from __future__ import annotations

import pytest

from msda import environment, loader
from tests.msda_inputs import run_fresh

BAD_VALUES = [
    ("MSDA_FORCE_REFERENCE", "maybe", "'1', 'true'"),
    ("MSDA_BUILD_CUDA", "perhaps", "'1', 'true'"),
    ("MSDA_VERBOSE_BUILD", "loud", "'1', 'true'"),
    ("MSDA_CPU_ISA", "garbage", "'avx2'"),
    ("MSDA_CPU_ISA", "avx512", "'avx2'"),
    ("MSDA_CPU_CACHE_MB", "lots", "whole number of MiB"),
    ("MSDA_CPU_CACHE_MB", "-5", "whole number of MiB"),
    ("MSDA_CPU_CACHE_MB", "1.5", "whole number of MiB"),
]


@pytest.fixture
def clean_env(monkeypatch):
    """No MSDA_* switch set but the test cache folder (set by conftest)."""
    for name in environment.KNOWN:
        if name != "MSDA_CACHE_DIR":
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name, value, valid", BAD_VALUES)
def test_bad_value_raises_naming_variable_value_and_valid_values(clean_env, name, value, valid):
    clean_env.setenv(name, value)
    with pytest.raises(environment.InvalidSwitch) as caught:
        environment.check_all()
    message = str(caught.value)
    assert f"{name}={value!r}" in message and "valid values" in message and valid in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "name, reader",
    [("MSDA_CPU_ISA", loader.cpu_isa), ("MSDA_BUILD_CUDA", loader.wants_cuda), ("MSDA_FORCE_REFERENCE", environment.force_reference)],
)
def test_the_readers_raise_too(clean_env, name, reader):
    """A value set after import is checked where it is read, not ignored."""
    clean_env.setenv(name, "garbage")
    with pytest.raises(environment.InvalidSwitch, match=f"{name}='garbage'"):
        reader()


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("No", False), ("off", False), ("", None), ("  ", None)])
def test_flag_values(clean_env, value, expected):
    clean_env.setenv("MSDA_VERBOSE_BUILD", value)
    assert environment.flag("MSDA_VERBOSE_BUILD") is expected


def test_cpu_isa_values(clean_env):
    for value, expected in (("avx2", "avx2"), ("AVX2", "avx2"), ("native", "native"), ("", None)):
        clean_env.setenv("MSDA_CPU_ISA", value)
        assert environment.cpu_isa() == expected


def test_cpu_cache_mb_values(clean_env):
    for value, expected in (("0", 0), ("512", 512), (" 64 ", 64)):
        clean_env.setenv("MSDA_CPU_CACHE_MB", value)
        assert environment.cpu_cache_mb() == expected


def test_unknown_msda_name_warns_with_the_known_names(clean_env):
    clean_env.setenv("MSDA_FORCE_REFRENCE", "1")
    with pytest.warns(UserWarning, match="MSDA_FORCE_REFRENCE.*msda reads only MSDA_FORCE_REFERENCE"):
        environment.check_all()


def test_force_reference_is_deprecated_and_names_the_replacement(clean_env):
    clean_env.setenv("MSDA_FORCE_REFERENCE", "1")
    with pytest.warns(FutureWarning, match="use_reference=True to msda.MultiScaleDeformableAttention"):
        environment.check_all()
    assert environment.force_reference()


def test_import_fails_on_a_bad_value():
    result = run_fresh("import msda", {"MSDA_CPU_ISA": "garbage"})
    assert result.returncode != 0
    assert "MSDA_CPU_ISA='garbage' is not valid; valid values: 'avx2'" in result.stderr


def test_compiled_library_warns_on_a_bad_cache_size(msda_cpu_library):
    """The C++ allocator reads MSDA_CPU_CACHE_MB itself: loaded without msda (which would raise
    first), it warns and keeps the default."""
    code = (
        "import warnings, torch\n"
        f"torch.ops.load_library({str(msda_cpu_library)!r})\n"
        "v = torch.randn(1, 4, 1, 8); s = torch.tensor([[2, 2]]); i = torch.tensor([0])\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = torch.ops.msda.ms_deform_attn(v, s, i, torch.rand(1, 3, 1, 1, 1, 2), torch.rand(1, 3, 1, 1, 1), 64)\n"
        "print('SHAPE', tuple(out.shape))\n"
        "for w in caught: print('WARNING', w.message)\n"
    )
    result = run_fresh(code, {"MSDA_CPU_CACHE_MB": "lots"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SHAPE (1, 3, 8)" in result.stdout
    # TORCH_WARN reaches Python's warnings or stderr, depending on where the allocator is first used
    assert "MSDA_CPU_CACHE_MB='lots' is not valid; valid values: a whole number of MiB" in result.stdout + result.stderr
