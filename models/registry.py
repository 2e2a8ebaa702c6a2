"""The family registry: every model family the training engine, ``eval``, ``detect`` and checkpoint
loading can run, built in or added by another package.

- Built-in families are listed here by name and the ``module:attribute`` that holds their
  ``FAMILIES`` tuple, so that ``family_names()`` (what ``--help`` lists) imports neither torch nor
  any model.
- A package adds families through the entry point group ``deformable_detr.families``; each entry
  point names a ``models.common.family.Family`` (or a tuple of them, or a zero-argument callable
  returning either). In ``setup.py``::

      entry_points={"deformable_detr.families": ["my-detr = my_package.family:FAMILY"]}

  The entry point's name is the family's ``--model`` name; it is listed without being imported.
- ``register_family(family)`` adds one in this process (a notebook, a test).

A config names its family by ``architectures`` (the detector class that wrote it) when present,
else by ``model_type``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Mapping
from typing import Any

from models.common.family import Family, check_family
from models.ddetr.variant_table import ONE_STAGE_VARIANTS, VARIANTS
from models.dino.variant_table import DINO_VARIANTS
from models.rt_detr.variant_table import RT_DETR_VARIANTS

__all__ = ["ENTRY_POINT_GROUP", "Family", "build_detector", "config_from_dict", "families", "family", "family_names", "family_of", "register_family", "variant_names"]

ENTRY_POINT_GROUP = "deformable_detr.families"
_BUILT_IN: dict[str, str] = {
    "deformable-detr": "models.ddetr.family:FAMILIES",
    "h-deformable-detr": "models.ddetr.family:FAMILIES",
    "dn-deformable-detr": "models.ddetr.family:FAMILIES",
    "group-detr": "models.ddetr.family:FAMILIES",
    "dino": "models.dino.family:FAMILIES",
    "rt-detr": "models.rt_detr.family:FAMILIES",
}
# the built-in families' --variant names, readable without importing them (tests tie them to the families)
BUILT_IN_VARIANTS: dict[str, tuple[str, ...]] = {
    "deformable-detr": tuple(VARIANTS),
    "h-deformable-detr": tuple(VARIANTS),
    "dn-deformable-detr": ("two_stage",),
    "group-detr": ONE_STAGE_VARIANTS,
    "dino": tuple(DINO_VARIANTS),
    "rt-detr": tuple(RT_DETR_VARIANTS),
}
_LOADED: dict[str, Family] = {}
_REGISTERED: dict[str, Family] = {}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def family_names() -> list[str]:
    """Every family's ``--model`` name, built-in first, then plug-ins (not imported)."""
    names = list(_BUILT_IN)
    names += sorted(name for name in set(_entry_points()) | set(_REGISTERED) if name not in _BUILT_IN)
    return names


def variant_names() -> dict[str, tuple[str, ...]]:
    """``--model`` name → its ``--variant`` names, for the built-in families (no import)."""
    return dict(BUILT_IN_VARIANTS)


def _resolve(target: str, source: str) -> list[Family]:
    module_name, _, attribute = target.partition(":")
    value: Any = getattr(importlib.import_module(module_name), attribute)
    return _as_families(value, source)


def _as_families(value: Any, source: str) -> list[Family]:
    if callable(value) and not isinstance(value, (Family, type)):
        value = value()
    values = [value] if isinstance(value, Family) or not isinstance(value, (tuple, list)) else list(value)
    return [check_family(item, source) for item in values]


def family(name: str) -> Family:
    """The family called ``name`` (``--model``); ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"model must be a family name (str), got {type(name).__name__}")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _LOADED:
        if name in _BUILT_IN:
            found = _resolve(_BUILT_IN[name], f"built-in family {name!r}")
        else:
            entry = _entry_points().get(name)
            if entry is None:
                raise ValueError(f"model must be one of {family_names()}, got {name!r}")
            try:
                found = _as_families(entry.load(), f"entry point {name!r} ({entry.value})")
            except ImportError as error:
                raise ValueError(f"model {name!r}: its package's entry point {entry.value!r} cannot be imported: {error}") from error
        for item in found:
            _LOADED.setdefault(item.name, item)
        if name not in _LOADED:
            raise ValueError(f"model {name!r}: its entry point gave families {[f.name for f in found]}, none called {name!r}")
    return _LOADED[name]


def register_family(new: Family) -> Family:
    """Add ``new`` in this process (a built-in name cannot be replaced); returns it."""
    check_family(new, "family")
    if new.name in _BUILT_IN:
        raise ValueError(f"family name {new.name!r} is built in; choose another name")
    _REGISTERED[new.name] = new
    return new


def families() -> list[Family]:
    """Every family, loaded (plug-ins are imported)."""
    return [family(name) for name in family_names()]


def family_of(config_or_dict: Any) -> Family:
    """The family of a config object or a config dict: by ``architectures`` (the detector class
    that wrote it) when it names one, else by config class / ``model_type`` (the first family of
    that class: ``deformable-detr`` for every Deformable DETR config)."""
    if isinstance(config_or_dict, Mapping):
        data = config_or_dict
    elif hasattr(config_or_dict, "to_dict"):
        data = {"architectures": getattr(config_or_dict, "extra", {}).get("architectures"), "model_type": getattr(config_or_dict, "model_type", None)}
    else:
        raise TypeError(f"config must be a model config or a config dict, got {type(config_or_dict).__name__}")
    known = families()
    architectures = data.get("architectures") or []
    for entry in known:
        if entry.detector_class.__name__ in architectures:
            return entry
    model_type = data.get("model_type", "deformable_detr")
    unknown = [name for name in architectures if not str(name).endswith("Model")]
    if unknown:
        warnings.warn(
            f"the config was written by {', '.join(map(str, unknown))}, which no installed family provides "
            f"({', '.join(f.name for f in known)}); it loads as the first family of model_type {model_type!r}. "
            f"Install the package that provides it to load it as it was trained",
            UserWarning,
            stacklevel=2,
        )
    if not isinstance(config_or_dict, Mapping):
        for entry in known:
            if type(config_or_dict) is entry.config_class:
                return entry
    for entry in known:
        if entry.config_class.model_type == model_type:
            return entry
    raise ValueError(f"config has model_type {model_type!r}; known: {sorted({f.config_class.model_type for f in known})}")


def config_from_dict(data: Mapping[str, Any], **overrides: Any) -> Any:
    """The config object a dict describes (its family from ``family_of``)."""
    return family_of(data).config_class.from_dict(dict(data), **overrides)


def build_detector(config: Any, model: str | None = None) -> Any:
    """A detector with fresh weights: of family ``model`` when given (its config class must match),
    else of ``config``'s family."""
    chosen = family_of(config) if model is None else family(model)
    if not isinstance(config, chosen.config_class):
        raise TypeError(f"--model {chosen.name} needs a {chosen.config_class.__name__}, got {type(config).__name__}")
    return chosen.detector_class(config)
