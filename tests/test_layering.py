"""The layering holds: csrc → msda → detr_blocks → models, and inside models the concern order
backbones → common → model families → processing → data → engine → cli. No module imports
upwards (function-level imports included), no model family imports another, and the import graph
of our packages has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("msda", "detr_blocks", "models")
LAYER = {"msda": 0, "detr_blocks": 1, "models": 2}
# Sub-packages of models, lowest first; families share a rank and never import each other.
MODELS_RANK = {"backbones": 0, "common": 1, "ddetr": 2, "dino": 2, "rt_detr": 2, "registry": 3, "extension": 3, "processing": 4, "data": 5, "quantization": 6, "engine": 7, "cli": 8}
FAMILIES = {"ddetr", "dino", "rt_detr"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of our packages that ``name`` imports anywhere in its file (resolved to known modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on pkg itself
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate.split(".")[0] not in PACKAGES:
                continue
            # the longest known module that the candidate names (``pkg.module.Name`` → ``pkg.module``)
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _models_part(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MODELS_RANK) else None


def test_the_walk_sees_every_layer_and_concern():
    seen = {name.split(".")[0] for name in MODULES} | {_models_part(name) for name in MODULES if name.startswith("models.")}
    assert set(PACKAGES) <= seen
    assert set(MODELS_RANK) - {"dino"} <= seen
    assert any(GRAPH[name] for name in MODULES), "the walk found no imports at all"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name):
    layer = LAYER[name.split(".")[0]]
    part = _models_part(name) if name.startswith("models.") else None
    for target in GRAPH[name]:
        assert LAYER[target.split(".")[0]] <= layer, f"{name} imports {target}, a higher layer"
        if not name.startswith("models") or not target.startswith("models"):
            continue
        target_part = _models_part(target)
        if target == "models":
            assert name == "models.__main__", f"{name} imports the models package root; import the module that defines the name"
            continue
        if part is None:  # models/__init__ (lazy names) and models/__main__ sit above everything
            continue
        assert target_part is not None, f"{name} imports {target}"
        assert MODELS_RANK[target_part] <= MODELS_RANK[part], f"{name} ({part}) imports {target} ({target_part}), a higher concern"
        if part in FAMILIES and target_part in FAMILIES:
            assert part == target_part, f"model family {part} imports another family: {target}"


def test_nothing_imports_the_command_line():
    for name, targets in GRAPH.items():
        if name.startswith("models.cli") or name == "models.__main__":
            continue
        assert not [t for t in targets if t.startswith("models.cli")], f"{name} imports the command line"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
