"""What a model family is, for the registry (``models.registry``): a name, a config class, a
detector class, its variants and its training recipe. Plain data, no torch import.

A third-party package describes its family with one ``Family`` and exposes it through the Python
entry point group ``deformable_detr.families`` (see ``docs/custom_variant.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class Family(NamedTuple):
    """A model family.

    name: the ``--model`` name (lower case, ``-`` between words).
    config_class: its config (``from_dict``, ``model_type``).
    detector_class: its detector (``cls(config)``, ``from_pretrained``, ``save_pretrained``).
    description: one line for ``--help``.
    defaults: config fields the family sets over its config class's defaults (e.g. hybrid matching).
    variants: ``--variant`` name → config fields (applied over ``defaults``).
    recipe: ``TrainingArgs`` fields where the family's paper differs from Deformable DETR's recipe.
    """

    name: str
    config_class: type
    detector_class: type
    description: str = ""
    defaults: Mapping[str, Any] = {}
    variants: Mapping[str, Mapping[str, Any]] = {}
    recipe: Mapping[str, Any] = {}

    def config_fields(self, variant: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The config fields of ``variant`` (None: the family's defaults only) with ``overrides``."""
        if variant is not None and variant not in self.variants:
            raise ValueError(f"variant must be one of {sorted(self.variants)} for --model {self.name}, got {variant!r}")
        return {**self.defaults, **(self.variants[variant] if variant is not None else {}), **overrides}

    def config(self, variant: str | None = None, **overrides: Any) -> Any:
        """A config of ``variant`` with ``overrides``."""
        return self.config_class(**self.config_fields(variant, **overrides))

    def build(self, variant: str | None = None, **overrides: Any) -> Any:
        """A detector of ``variant`` with config ``overrides`` (fresh weights)."""
        return self.detector_class(self.config(variant, **overrides))


def check_family(family: Any, source: str) -> Family:
    """``family`` if it is a well-formed ``Family``; ``TypeError``/``ValueError`` naming ``source``."""
    if not isinstance(family, Family):
        raise TypeError(f"{source} must be a models.common.family.Family, got {type(family).__name__}")
    if not family.name or family.name != family.name.lower() or not family.name.replace("-", "").isalnum():
        raise ValueError(f"{source}: family name must be lower case letters, digits and '-', got {family.name!r}")
    for attribute in ("config_class", "detector_class"):
        if not isinstance(getattr(family, attribute), type):
            raise TypeError(f"{source}: {attribute} must be a class, got {getattr(family, attribute)!r}")
    return family
