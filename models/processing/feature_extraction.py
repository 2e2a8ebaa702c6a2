"""``DeformableDetrFeatureExtractor``: the deprecated name of ``DeformableDetrImageProcessor``."""

from __future__ import annotations

import warnings
from typing import Any

from models.processing.image_processing import DeformableDetrImageProcessor


class DeformableDetrFeatureExtractor(DeformableDetrImageProcessor):
    """Deprecated alias of ``DeformableDetrImageProcessor`` (same arguments and results).

    Creating one emits a ``FutureWarning``; use ``DeformableDetrImageProcessor`` instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "DeformableDetrFeatureExtractor is deprecated; use DeformableDetrImageProcessor instead",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
