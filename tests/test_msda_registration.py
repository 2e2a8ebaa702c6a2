"""The op is whole in every fresh process: resolvable right after ``import msda``, opcheck-clean,
and traced as one node by torch.compile and torch.export before any eager call, cached or not.

Every case runs in its own fresh process (``run_fresh``); the outputs are compared there with the
pure-PyTorch reference.
"""

from __future__ import annotations

import pytest

from tests.msda_inputs import SMALL_CALL, fake_compile, run_fresh

OPCHECK = SMALL_CALL + (
    "import warnings, msda\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    op = torch.ops.msda.ms_deform_attn.default\n"
    "    assert torch.ops.msda.ms_deform_attn_backward.default is not None\n"
    "    torch.library.opcheck(op, (v.requires_grad_(), s.int(), i, l.requires_grad_(), w.requires_grad_(), 64))\n"
    "    out = op(v, s, i, l, w, 64)\n"
    "torch.testing.assert_close(out, msda.ms_deform_attn_reference(v, s, i, l, w))\n"
    "print('IMPL', msda.active_implementation('cpu').name)\n"
    "print('FALLBACK-WARNINGS', sum('falling back' in str(x.message) for x in caught))\n"
)

# torch.compile with a backend that records the graph it is given
COMPILE = SMALL_CALL + (
    "import msda\n"
    "graphs = []\n"
    "def backend(gm, example_inputs):\n"
    "    graphs.append(str(gm.graph))\n"
    "    from torch._dynamo.backends.common import aot_autograd\n"
    "    return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)\n"
    "def attend(v, l, w):\n"
    "    return msda.ms_deform_attn(v * 2, s, i, l, w.softmax(-1))\n"
    "compiled = torch.compile(attend, fullgraph=True, backend=backend)\n"
    "inputs = [t.clone().requires_grad_() for t in (v, l, w)]\n"
    "out = compiled(*inputs)\n"
    "out.square().sum().backward()\n"
    "print('OP-IN-GRAPH', 'msda.ms_deform_attn' in graphs[0])\n"
    "refs = [t.double().requires_grad_() for t in (v, l, w)]\n"
    "expected = msda.ms_deform_attn_reference(refs[0] * 2, s, i, refs[1], refs[2].softmax(-1))\n"
    "expected.square().sum().backward()\n"
    "torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)\n"
    "for mine, theirs in zip(inputs, refs):\n"
    "    torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-3, atol=1e-4)\n"
    "print('IMPL', msda.active_implementation('cpu').name)\n"
)

EXPORT = SMALL_CALL + (
    "import msda\n"
    "class Attend(torch.nn.Module):\n"
    "    def forward(self, v, s, i, l, w):\n"
    "        return msda.ms_deform_attn(v, s, i, l, w)\n"
    "program = torch.export.export(Attend(), (v, s, i, l, w))\n"
    "print('OP-IN-GRAPH', any('msda.ms_deform_attn' in str(n.target) for n in program.graph.nodes))\n"
    "torch.testing.assert_close(program.module()(v, s, i, l, w), msda.ms_deform_attn_reference(v, s, i, l, w))\n"
    "module = msda.MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=3).eval()\n"
    "query, refs, feats = torch.randn(2, 6, 8), torch.rand(2, 6, 2, 2), torch.randn(2, 26, 8)\n"
    "program = torch.export.export(module, (query, refs, feats, s.int(), i.int()))\n"
    "print('MODULE-OP-IN-GRAPH', any('msda.ms_deform_attn' in str(n.target) for n in program.graph.nodes))\n"
    "reference = msda.MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=3, use_reference=True)\n"
    "reference.load_state_dict(module.state_dict())\n"
    "torch.testing.assert_close(program.module()(query, refs, feats, s.int(), i.int()), reference(query, refs, feats, s, i), rtol=1e-5, atol=1e-6)\n"
    "print('IMPL', msda.active_implementation('cpu').name)\n"
)

NO_COMPILER = {"CXX": "/nonexistent/c++"}


def test_opcheck_right_after_import_with_a_cached_build(msda_cpu_library):
    result = run_fresh(OPCHECK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPL compiled-cpu" in result.stdout and "FALLBACK-WARNINGS 0" in result.stdout
    assert "compiling" not in result.stderr  # loaded at import, not built


def test_opcheck_right_after_import_without_any_build(tmp_path):
    result = run_fresh(OPCHECK, {"MSDA_CACHE_DIR": str(tmp_path), **NO_COMPILER})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPL reference" in result.stdout and "FALLBACK-WARNINGS 1" in result.stdout


def test_library_loaded_before_msda_defines_the_same_schemas(msda_cpu_library, tmp_path):
    code = (
        f"import torch\ntorch.ops.load_library({str(msda_cpu_library)!r})\n"
        "import msda\nfrom msda.registration import SCHEMAS\n"
        "for name, schema in SCHEMAS.items():\n"
        "    found = str(getattr(torch.ops.msda, name).default._schema)\n"
        "    assert found == 'msda::' + schema, (found, schema)\n"
        + SMALL_CALL
        + "torch.testing.assert_close(torch.ops.msda.ms_deform_attn(v, s, i, l, w, 64), msda.ms_deform_attn_reference(v, s, i, l, w))\n"
        "print('OK')\n"
    )
    # an empty cache: msda finds nothing to load and must accept the schemas the library defined
    result = run_fresh(code, {"MSDA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout and "disagree" not in result.stderr


def test_compile_before_any_eager_call_with_a_cached_build(msda_cpu_library):
    result = run_fresh(COMPILE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OP-IN-GRAPH True" in result.stdout and "IMPL compiled-cpu" in result.stdout


def test_compile_before_any_eager_call_builds_on_first_run(msda_cpu_library, tmp_path):
    result = run_fresh(fake_compile(msda_cpu_library) + COMPILE, {"MSDA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    # traced as the op while nothing was built; the compiled graph's first run built the library
    assert "OP-IN-GRAPH True" in result.stdout and "FAKE-COMPILED" in result.stdout
    assert "IMPL compiled-cpu" in result.stdout


def test_export_before_any_eager_call_with_a_cached_build(msda_cpu_library):
    result = run_fresh(EXPORT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OP-IN-GRAPH True" in result.stdout and "MODULE-OP-IN-GRAPH True" in result.stdout


def test_export_before_any_eager_call_builds_on_first_run(msda_cpu_library, tmp_path):
    result = run_fresh(fake_compile(msda_cpu_library) + EXPORT, {"MSDA_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OP-IN-GRAPH True" in result.stdout and "MODULE-OP-IN-GRAPH True" in result.stdout
    assert "IMPL compiled-cpu" in result.stdout


def test_export_without_a_compiler_runs_the_reference(tmp_path):
    result = run_fresh(EXPORT, {"MSDA_CACHE_DIR": str(tmp_path), **NO_COMPILER})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OP-IN-GRAPH True" in result.stdout and "MODULE-OP-IN-GRAPH True" in result.stdout
    assert "IMPL reference" in result.stdout


@pytest.mark.parametrize("target", ["function", "module"])
def test_exporting_the_reference_with_shapes_as_tensors_raises_a_clear_error(target, tmp_path):
    code = SMALL_CALL + (
        "import msda\n"
        "class Attend(torch.nn.Module):\n"
        "    def forward(self, v, s, i, l, w):\n"
        "        return msda.ms_deform_attn_reference(v, s, i, l, w)\n"
        "module = msda.MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=3, use_reference=True)\n"
        f"args = (v, s, i, l, w) if {target == 'function'!r} else (torch.randn(2, 6, 8), torch.rand(2, 6, 2, 2), torch.randn(2, 26, 8), s, i)\n"
        f"model = Attend() if {target == 'function'!r} else module\n"
        "try:\n"
        "    torch.export.export(model, args)\n"
        "    print('EXPORTED')\n"
        "except RuntimeError as error:\n"
        "    print('ERROR', type(error).__name__, str(error).splitlines()[0])\n"
    )
    result = run_fresh(code, {"MSDA_CACHE_DIR": str(tmp_path), "MSDA_FORCE_REFERENCE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR RuntimeError msda: the pure-PyTorch reference reads the values of spatial_shapes" in result.stdout
    assert "msda.ms_deform_attn" in result.stdout
