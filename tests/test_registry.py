"""The family registry: built-in families, listing without imports, and a third-party plug-in that
joins through a Python entry point, trains through ``deformable-detr train`` and loads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models import registry

PLUGIN = '''
"""A plug-in family: two-stage Deformable DETR trained with a twin one-to-one group on the
next-ranked proposals (inference is plain two-stage Deformable DETR)."""

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.extension import Family, SelectedQueriesGroup, TwoStageProposals


class TwinDetr(DeformableDetrForObjectDetection):
    def __init__(self, config, **kwargs):
        selection = TwoStageProposals(2 * config.two_stage_num_proposals, config.d_model)
        twin = SelectedQueriesGroup("twin", config.two_stage_num_proposals)
        super().__init__(config, query_selection=selection, groups=[twin], **kwargs)


FAMILY = Family("twin-detr", DeformableDetrConfig, TwinDetr, "two-stage Deformable DETR + a twin group",
                defaults={"two_stage": True, "with_box_refine": True})
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A folder holding the plug-in package and its dist-info (as ``pip install`` would write)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "twin_plugin").mkdir()
    (root / "twin_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "twin_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twin-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ntwin-detr = twin_plugin:FAMILY\n")
    return root


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("deformable-detr")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "import sys; from models.cli.main import main; sys.exit(main())"]


def _run(arguments: list[str], cwd: Path, plugin: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin) if plugin else "", os.environ.get("PYTHONPATH", "")]))}
    return subprocess.run([*_cli(), *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_names_are_listed_without_importing_torch():
    code = "import sys, models.registry as r; print(r.family_names()); assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("deformable-detr", "h-deformable-detr", "dn-deformable-detr", "group-detr", "dino"):
        assert name in result.stdout


@pytest.mark.parametrize("name", registry.family_names())
def test_built_in_variant_names_are_the_families_own(name):
    family = registry.family(name)
    assert family.name == name
    assert tuple(family.variants) == registry.variant_names()[name]
    # RT-DETR's backbone is its backbone_config (no torchvision name to swap in)
    overrides = {"d_model": 64} if name == "rt-detr" else {"backbone": "resnet18", "d_model": 64, "use_pretrained_backbone": False}
    for variant in family.variants:  # every variant is a valid config
        family.config(variant, **overrides)


def test_family_of_reads_architectures_then_model_type():
    assert registry.family_of({"model_type": "dino"}).name == "dino"
    assert registry.family_of({"model_type": "deformable_detr", "architectures": ["DeformableDetrForObjectDetection"]}).name == "deformable-detr"
    with pytest.raises(ValueError, match="model_type"):
        registry.family_of({"model_type": "rt_detr_nope"})
    with pytest.raises(ValueError, match="model must be one of"):
        registry.family("nope")


def test_register_family_refuses_built_in_names():
    with pytest.raises(ValueError, match="built in"):
        registry.register_family(registry.family("dino")._replace(name="dino"))
    with pytest.raises(TypeError, match="Family"):
        registry.register_family({"name": "x"})


def test_plugin_family_trains_through_the_command_line_and_loads_back(plugin_path, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    made = _run(["make-data", "--out", str(data), "--train", "8", "--val", "2"], tmp_path, None)
    assert made.returncode == 0, made.stderr
    listed = _run(["train", "--help"], tmp_path, plugin_path)
    assert "twin-detr" in listed.stdout
    trained = _run(["train", "--model", "twin-detr", "--data", str(data), "--out", str(run), "--preset", "demo", "--epochs", "1",
                    "--max-steps-per-epoch", "2", "--num-workers", "0", "--no-progress", "--threads", "1"], tmp_path, plugin_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "train_args.json").read_text())["train_args"]["model"] == "twin-detr"
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["TwinDetr"]
    image = sorted((data / "images" / "val").iterdir())[0]
    detected = _run(["detect", str(image), "--checkpoint", str(run), "--out", str(tmp_path / "det")], tmp_path, plugin_path)
    assert detected.returncode == 0, detected.stderr[-3000:]
    # in Python, the registry finds the plug-in by the checkpoint's architectures and builds its class
    code = ("import json, sys; from models.registry import family_of; "
            f"f = family_of(json.load(open({str(run / 'model' / 'config.json')!r}))); "
            f"m = f.detector_class.from_pretrained({str(run / 'model')!r}); print(f.name, type(m).__name__, [g.name for g in m.model.query_groups])")
    loaded = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(plugin_path)}, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["twin-detr", "TwinDetr", "['twin']"]
    # without the plug-in installed, the checkpoint loads as its model_type's family, with a warning naming its class
    missing = _run(["detect", str(image), "--checkpoint", str(run), "--out", str(tmp_path / "det2")], tmp_path, None)
    assert "TwinDetr" in missing.stderr and "no installed family" in missing.stderr
