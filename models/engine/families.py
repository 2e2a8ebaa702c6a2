"""The model families the application layer (training, evaluation, the command line) can run.

One table: the command-line name of each family, its config class and its detection class. A
config dict or ``config.json`` names its family by ``model_type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import nn

from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection
from models.dino.config import DinoConfig
from models.dino.modeling import DinoForObjectDetection


class Family(NamedTuple):
    """A model family: ``name`` (``--model``), its config class, its detector class, and the
    ``TrainingArgs`` fields where its paper's recipe differs from Deformable DETR's (the defaults)."""

    name: str
    config_class: type
    detector_class: type
    recipe: dict[str, Any]


FAMILIES: dict[str, Family] = {
    "deformable-detr": Family("deformable-detr", DeformableDetrConfig, DeformableDetrForObjectDetection, {}),
    # DINO's 12-epoch schedule: AdamW lr 1e-4 (backbone 1e-5), decay at epoch 11 (config/DINO/DINO_4scale.py)
    "dino": Family("dino", DinoConfig, DinoForObjectDetection, {"epochs": 12, "lr_drop": 11, "lr": 1e-4, "lr_backbone": 1e-5}),
}
_BY_MODEL_TYPE = {family.config_class.model_type: family for family in FAMILIES.values()}


def family(name: str) -> Family:
    """The family called ``name`` (``deformable-detr`` or ``dino``)."""
    if name not in FAMILIES:
        raise ValueError(f"model must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def family_of(config_or_dict: Any) -> Family:
    """The family of a config object, or of a config dict by its ``model_type`` (default Deformable DETR)."""
    if isinstance(config_or_dict, Mapping):
        model_type = config_or_dict.get("model_type", DeformableDetrConfig.model_type)
        if model_type not in _BY_MODEL_TYPE:
            raise ValueError(f"config has model_type {model_type!r}; known: {sorted(_BY_MODEL_TYPE)}")
        return _BY_MODEL_TYPE[model_type]
    for entry in FAMILIES.values():
        if isinstance(config_or_dict, entry.config_class):
            return entry
    raise TypeError(f"config must be one of {[f.config_class.__name__ for f in FAMILIES.values()]}, got {type(config_or_dict).__name__}")


def config_from_dict(data: Mapping[str, Any], **overrides: Any) -> Any:
    """The config object a dict describes (its family from ``model_type``)."""
    return family_of(data).config_class.from_dict(dict(data), **overrides)


def build_detector(config: Any) -> nn.Module:
    """A detector of ``config``'s family with fresh weights."""
    return family_of(config).detector_class(config)
