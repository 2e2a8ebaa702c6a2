"""DINO's two published configurations as config fields, with no model imports (so that the
command line can list them without importing torch)."""

from __future__ import annotations

from typing import Any

DINO_VARIANTS: dict[str, dict[str, Any]] = {
    "4scale": {},
    "5scale": {"backbone_out_indices": [1, 2, 3, 4], "num_feature_levels": 5},
}
