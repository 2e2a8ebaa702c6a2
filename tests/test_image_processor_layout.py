"""Channel layout of the inputs: a PIL image's is known and never guessed; an array's follows
``input_data_format`` when given, else transformers' guess. Checked against transformers 4.57."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

transformers = pytest.importorskip("transformers")

from models.processing.image_processing import DeformableDetrImageProcessor  # noqa: E402
from models.processing.image_processing_fast import DeformableDetrImageProcessorFast  # noqa: E402

SIZE = {"shortest_edge": 64, "longest_edge": 128}
TINY = [(1, 1), (3, 1), (1, 3), (64, 1), (1, 64), (3, 3), (2, 5)]
"""(width, height) of tiny images; those with a side of 1 or 3 have an ambiguous ``[H, W, 3]`` array."""


def pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def whole_image_box(width: int, height: int) -> dict:
    return {"image_id": 7, "annotations": [{"id": 1, "bbox": [0.0, 0.0, float(width), float(height)], "category_id": 2, "area": float(width * height), "iscrowd": 0}]}


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_same(ours, theirs) -> None:
    torch.testing.assert_close(ours["pixel_values"].float(), theirs["pixel_values"].float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours["pixel_mask"], theirs["pixel_mask"].to(ours["pixel_mask"].dtype), rtol=0, atol=0)
    for mine, ref in zip(ours["labels"], theirs["labels"]):
        for key in ("boxes", "size", "orig_size", "area", "class_labels"):
            torch.testing.assert_close(mine[key].double(), ref[key].double(), rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("width,height", TINY)
def test_tiny_pil_images_slow_match_transformers_told_channels_last(width, height):
    """Reported: a 1x1 or 3x1 PIL image was read as channels-first, so its boxes came out wrong. The
    reference, told that a PIL image's array is channels-last, gives the right answer."""
    image = PIL.Image.fromarray(pixels(width, height))
    annotation = whole_image_box(width, height)
    ours = DeformableDetrImageProcessor(size=SIZE)(image, annotations=annotation, return_tensors="pt")
    theirs = quiet(transformers.DeformableDetrImageProcessor(size=SIZE), image, annotations=annotation, input_data_format="channels_last", return_tensors="pt")
    assert_same(ours, theirs)
    assert ours["labels"][0]["orig_size"].tolist() == [height, width]


@pytest.mark.parametrize("width,height", TINY)
def test_tiny_pil_images_fast_match_transformers_fast(width, height):
    """transformers' fast processor turns a PIL image into a ``[3, H, W]`` tensor first, so its guess is right."""
    image = PIL.Image.fromarray(pixels(width, height))
    annotation = whole_image_box(width, height)
    ours = DeformableDetrImageProcessorFast(size=SIZE)(image, annotations=annotation, return_tensors="pt")
    theirs = quiet(transformers.DeformableDetrImageProcessorFast(size=SIZE), image, annotations=annotation, return_tensors="pt")
    assert_same(ours, theirs)
    assert ours["labels"][0]["orig_size"].tolist() == [height, width]


@pytest.mark.parametrize("cls", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
@pytest.mark.parametrize("width,height", [(1, 1), (64, 1), (3, 40)])
def test_tiny_grayscale_pil_images(cls, width, height):
    gray = pixels(width, height)[:, :, 0]
    from_pil = cls(size=SIZE)(PIL.Image.fromarray(gray), annotations=whole_image_box(width, height), return_tensors="pt")
    from_array = cls(size=SIZE)(gray, annotations=whole_image_box(width, height), return_tensors="pt")
    torch.testing.assert_close(from_pil["pixel_values"], from_array["pixel_values"], rtol=0, atol=0)
    assert from_pil["labels"][0]["orig_size"].tolist() == [height, width]


@pytest.mark.parametrize("width,height", [(64, 1), (3, 40), (1, 1)])
def test_ambiguous_arrays_respect_input_data_format(width, height):
    """An ambiguous ``[H, W, 3]`` array told channels-last is read as the reference reads it."""
    array = pixels(width, height)
    annotation = whole_image_box(width, height)
    ours = DeformableDetrImageProcessor(size=SIZE)(array, annotations=annotation, input_data_format="channels_last", return_tensors="pt")
    theirs = quiet(transformers.DeformableDetrImageProcessor(size=SIZE), array, annotations=annotation, input_data_format="channels_last", return_tensors="pt")
    assert_same(ours, theirs)
    fast = DeformableDetrImageProcessorFast(size=SIZE)(torch.from_numpy(array), annotations=annotation, input_data_format="channels_last", return_tensors="pt")
    assert fast["labels"][0]["orig_size"].tolist() == [height, width]


def test_ambiguous_array_without_format_follows_the_reference_guess():
    """``[3, 3, 3]``: both axes could be channels; like transformers, the first one is taken."""
    array = pixels(3, 3)
    channels_first = array.transpose(2, 0, 1).copy()
    annotation = whole_image_box(3, 3)
    ours = DeformableDetrImageProcessor(size=SIZE)(channels_first, annotations=annotation, return_tensors="pt")
    theirs = quiet(transformers.DeformableDetrImageProcessor(size=SIZE), channels_first, annotations=annotation, return_tensors="pt")
    assert_same(ours, theirs)


@pytest.mark.parametrize("cls", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
def test_input_data_format_describes_arrays_not_pil_images(cls):
    """A batch of a PIL image and a channels-first array, with input_data_format='channels_first':
    each image comes out as it does alone."""
    image = PIL.Image.fromarray(pixels(40, 1))
    array = pixels(30, 20, seed=1).transpose(2, 0, 1).copy()
    batch = cls(size=SIZE)([image, array], input_data_format="channels_first", return_tensors="pt")
    alone = [cls(size=SIZE)(image, return_tensors="pt"), cls(size=SIZE)(array, input_data_format="channels_first", return_tensors="pt")]
    for index, single in enumerate(alone):
        height, width = single["pixel_values"].shape[-2:]
        torch.testing.assert_close(batch["pixel_values"][index, :, :height, :width], single["pixel_values"][0], rtol=0, atol=0)
        assert int(batch["pixel_mask"][index].sum()) == height * width
    height, width = alone[0]["pixel_values"].shape[-2:]
    assert height < width, "the 40x1 PIL image must stay wide"
