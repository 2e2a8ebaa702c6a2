"""The model families the application layer runs: ``models.registry`` (kept as this module's names
for code written against earlier releases)."""

from __future__ import annotations

from models.common.family import Family
from models.registry import build_detector, config_from_dict, families, family, family_names, family_of

__all__ = ["Family", "build_detector", "config_from_dict", "families", "family", "family_names", "family_of"]
