"""Issue 14, item 4 (processor part): the slow and the fast processor refuse, or warn about, the
same pixel values. One table of (image, processor options, expected) drives both."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from models import DeformableDetrImageProcessor, DeformableDetrImageProcessorFast

CASES = [
    # (id, image, options, expected: "ok" | "warns" | "raises:<match>")
    ("uint8", np.full((16, 20, 3), 200, np.uint8), {}, "ok"),
    ("uint16 above 255", np.full((16, 20, 3), 4000, np.uint16), {}, "raises:outside \\[0, 255\\]"),
    ("int negative", np.full((16, 20, 3), -3, np.int32), {}, "raises:outside \\[0, 255\\]"),
    ("float negative", np.full((16, 20, 3), -0.5, np.float32), {}, "raises:float values"),
    ("float above 1", np.full((16, 20, 3), 1.5, np.float32), {}, "raises:float values"),
    ("NaN", np.full((16, 20, 3), np.nan, np.float32), {}, "raises:NaN or infinite"),
    ("inf", np.full((16, 20, 3), np.inf, np.float32), {"do_resize": False}, "raises:NaN or infinite"),
    ("already rescaled", np.full((16, 20, 3), 0.5, np.float32), {}, "warns"),
    ("already rescaled, not rescaling", np.full((16, 20, 3), 0.5, np.float32), {"do_rescale": False}, "ok"),
    ("integer floats in range", np.full((16, 20, 3), 100.0, np.float32), {}, "ok"),
    ("tensor uint16 above 255", torch.full((3, 16, 20), 300, dtype=torch.int32), {}, "raises:outside \\[0, 255\\]"),
]


@pytest.mark.parametrize("processor_class", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
@pytest.mark.parametrize("name, image, options, expected", CASES, ids=[case[0] for case in CASES])
def test_both_processors_treat_values_alike(processor_class, name, image, options, expected):
    processor = processor_class(size={"shortest_edge": 16, "longest_edge": 32})
    call = lambda: processor(image, return_tensors="pt", **options)  # noqa: E731
    if expected.startswith("raises:"):
        with pytest.raises(ValueError, match=expected.split(":", 1)[1]):
            call()
    elif expected == "warns":
        with pytest.warns(UserWarning, match="already rescaled"):
            call()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            call()
