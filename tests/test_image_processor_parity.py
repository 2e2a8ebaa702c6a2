"""Parity of our image processors with transformers 4.57 (slow vs slow, fast vs fast) on real photographs.

Photographs come from scikit-image; COCO detection and panoptic annotations are built here. Every output
field must agree within 1e-5; our slow and fast processors must agree within what resize interpolation
(PIL vs torchvision, both rounding to uint8) allows.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeformableDetrImageProcessor as HFSlow  # noqa: E402
from transformers import DeformableDetrImageProcessorFast as HFFast  # noqa: E402

from models.processing.image_processing import DeformableDetrImageProcessor  # noqa: E402
from models.processing.image_processing_fast import DeformableDetrImageProcessorFast  # noqa: E402

torch.set_num_threads(1)
SMALL = {"shortest_edge": 160, "longest_edge": 250}
PAIRS = {"slow": (DeformableDetrImageProcessor, HFSlow), "fast": (DeformableDetrImageProcessorFast, HFFast)}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skimage.data.astronaut(),  # 512 x 512 x 3
        "coffee": skimage.data.coffee(),  # 400 x 600 x 3
        "chelsea": skimage.data.chelsea(),  # 300 x 451 x 3
        "camera": skimage.data.camera(),  # 512 x 512 grayscale
    }


def detection_annotation(image_id: int, height: int, width: int, crowd: bool = True) -> dict:
    """COCO detection annotation with normal, clipped, fully-outside, degenerate and (optionally) crowd boxes."""

    def polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
        return [[x, y, x + w, y, x + w * 0.8, y + h, x, y + h * 0.6]]

    objects = [
        {"bbox": [0.1 * width, 0.15 * height, 0.3 * width, 0.25 * height], "category_id": 1},
        {"bbox": [0.7 * width, 0.6 * height, 0.5 * width, 0.6 * height], "category_id": 7},  # partly outside
        {"bbox": [-20.0, -10.5, 60.25, 45.75], "category_id": 3},  # starts outside (top-left)
        {"bbox": [0.4 * width, 0.4 * height, 0.0, 30.0], "category_id": 4},  # zero width: removed
        {"bbox": [width + 5.0, 10.0, 20.0, 20.0], "category_id": 5},  # fully outside: removed
        {"bbox": [0.35 * width, 0.5 * height, 0.2 * width, 0.3 * height], "category_id": 2},
    ]
    annotations = []
    for n, obj in enumerate(objects):
        x, y, w, h = obj["bbox"]
        annotations.append(
            {
                **obj,
                "id": n,
                "area": float(max(w, 0) * max(h, 0)) * 0.9,
                "iscrowd": 0,
                "segmentation": polygon(max(x, 0), max(y, 0), max(w, 1), max(h, 1)),
            }
        )
    if crowd:
        annotations.insert(
            1,
            {"id": 99, "bbox": [5.0, 5.0, 40.0, 40.0], "category_id": 9, "area": 1600.0, "iscrowd": 1,
             "segmentation": {"size": [height, width], "counts": [5, 10, 100]}},
        )
    return {"image_id": image_id, "annotations": annotations}


def to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def assert_close(ours, theirs, atol: float = 1e-5, what: str = "") -> None:
    ours, theirs = to_numpy(ours), to_numpy(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    if ours.size:
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=0, atol=atol, err_msg=what)


def assert_same_outputs(ours, theirs) -> None:
    assert_close(ours["pixel_values"], theirs["pixel_values"], what="pixel_values")
    if "pixel_mask" in theirs:
        assert_close(ours["pixel_mask"], theirs["pixel_mask"], what="pixel_mask")
        assert to_numpy(ours["pixel_mask"]).dtype == np.int64
    else:
        assert "pixel_mask" not in ours
    if "labels" in theirs:
        assert len(ours["labels"]) == len(theirs["labels"])
        for index, (mine, ref) in enumerate(zip(ours["labels"], theirs["labels"])):
            assert set(ref) <= set(mine), f"labels[{index}] misses {set(ref) - set(mine)}"
            for key in ref:
                assert_close(mine[key], ref[key], what=f"labels[{index}][{key!r}]")
            for key in ("class_labels", "iscrowd", "image_id", "orig_size"):
                if key in mine:
                    assert to_numpy(mine[key]).dtype == np.int64, key


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


DETECTION_CASES = [
    pytest.param(dict(), id="default-size"),
    pytest.param(dict(size=SMALL), id="shortest-longest"),
    pytest.param(dict(size={"max_height": 180, "max_width": 150}), id="max-height-width"),
    pytest.param(dict(size={"height": 123, "width": 201}), id="exact-height-width"),
    pytest.param(dict(size=SMALL, resample=3), id="bicubic"),
    pytest.param(dict(size=SMALL, resample=0), id="nearest"),
    pytest.param(dict(size=SMALL, do_convert_annotations=False), id="absolute-boxes"),
    pytest.param(dict(size=SMALL, pad_size={"height": 260, "width": 300}), id="pad-size"),
    pytest.param(dict(size=SMALL, do_normalize=False), id="rescale-only"),
    pytest.param(dict(size=SMALL, do_normalize=False, do_rescale=False), id="uint8-out"),
    pytest.param(dict(size=SMALL, image_mean=0.5, image_std=[0.2, 0.3, 0.4], rescale_factor=1 / 200), id="custom-norm"),
    pytest.param(dict(do_resize=False), id="no-resize"),
]


@pytest.mark.parametrize("kwargs", DETECTION_CASES)
@pytest.mark.parametrize("speed", ["slow", "fast"])
def test_detection_parity(photos, speed, kwargs):
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"]]
    annotations = [detection_annotation(i + 1, *image.shape[:2]) for i, image in enumerate(images)]
    annotations[2] = {"image_id": 3, "annotations": []}  # an image without objects
    ours_cls, ref_cls = PAIRS[speed]
    ours = ours_cls()(images, annotations=copy.deepcopy(annotations), return_tensors="pt", **kwargs)
    theirs = quiet(ref_cls(), images, annotations=copy.deepcopy(annotations), return_tensors="pt", **kwargs)
    assert_same_outputs(ours, theirs)
    # crowd, zero-width and fully-outside objects are gone; the others are kept
    assert to_numpy(ours["labels"][0]["class_labels"]).tolist() == [1, 7, 3, 2]


@pytest.mark.parametrize("speed", ["slow", "fast"])
@pytest.mark.parametrize("size", [SMALL, {"height": 140, "width": 170}])
def test_detection_masks_parity(photos, speed, size):
    images = [photos["chelsea"], photos["coffee"]]
    # The reference fast processor cannot rasterise masks when crowd objects are present (it indexes the
    # masks of all objects with the keep-mask of the non-crowd ones); the reference slow one cannot resize
    # an empty mask set. Both situations are tested for our processors below.
    annotations = [detection_annotation(i, *image.shape[:2], crowd=speed == "slow") for i, image in enumerate(images)]
    ours_cls, ref_cls = PAIRS[speed]
    kwargs = dict(size=size, return_segmentation_masks=True, return_tensors="pt")
    ours = ours_cls()(images, annotations=copy.deepcopy(annotations), **kwargs)
    theirs = quiet(ref_cls(), images, annotations=copy.deepcopy(annotations), **kwargs)
    assert_same_outputs(ours, theirs)
    masks = to_numpy(ours["labels"][0]["masks"])
    assert masks.dtype == bool and masks.shape[0] == 4 and masks.any(axis=(1, 2)).all()


def test_fast_masks_with_crowd_and_empty_image(photos):
    """Crowd objects are dropped before rasterising; an image with no objects gives ``[0, H, W]`` masks."""
    image = photos["chelsea"]
    with_crowd = detection_annotation(1, *image.shape[:2], crowd=True)
    without_crowd = detection_annotation(1, *image.shape[:2], crowd=False)
    kwargs = dict(size=SMALL, return_segmentation_masks=True, return_tensors="pt")
    images, annotations = [image, photos["coffee"]], [with_crowd, {"image_id": 2, "annotations": []}]
    ours = DeformableDetrImageProcessorFast()(images, copy.deepcopy(annotations), **kwargs)
    theirs = quiet(HFFast(), [image], annotations=[without_crowd], **kwargs)
    for key in theirs["labels"][0]:
        assert_close(ours["labels"][0][key], theirs["labels"][0][key], what=key)
    assert tuple(ours["labels"][1]["masks"].shape) == (0, *ours["pixel_values"].shape[-2:])
    slow = DeformableDetrImageProcessor()(images, copy.deepcopy(annotations), **kwargs)
    assert tuple(slow["labels"][1]["masks"].shape) == (0, *slow["pixel_values"].shape[-2:])


@pytest.mark.parametrize("speed", ["slow", "fast"])
def test_input_kinds_parity(photos, speed):
    """PIL images, channels-first arrays, torch tensors and float images in [0, 1]."""
    astronaut, coffee = photos["astronaut"], photos["coffee"]
    ours_cls, ref_cls = PAIRS[speed]
    cases = [
        ([PIL.Image.fromarray(astronaut), PIL.Image.fromarray(coffee)], {}),
        ([astronaut.transpose(2, 0, 1).copy(), coffee.transpose(2, 0, 1).copy()], {}),
        ([torch.from_numpy(astronaut).permute(2, 0, 1), torch.from_numpy(coffee).permute(2, 0, 1)], {}),
        ([astronaut.astype(np.float32) / 255, coffee.astype(np.float32) / 255], {"do_rescale": False}),
    ]
    for images, extra in cases:
        ours = ours_cls()(images, size=SMALL, return_tensors="pt", **extra)
        theirs = quiet(ref_cls(), images, size=SMALL, return_tensors="pt", **extra)
        assert_same_outputs(ours, theirs)


def test_grayscale_is_repeated_to_rgb(photos):
    """A 2-D photograph gives three equal channels: the reference slow processor fed the stacked RGB copy."""
    camera = photos["camera"]
    stacked = np.repeat(camera[:, :, None], 3, axis=2)
    ours = DeformableDetrImageProcessor()([camera, photos["coffee"]], size=SMALL, return_tensors="pt")
    theirs = quiet(HFSlow(), [stacked, photos["coffee"]], size=SMALL, return_tensors="pt")
    assert_same_outputs(ours, theirs)
    fast = DeformableDetrImageProcessorFast()([camera, photos["coffee"]], size=SMALL, return_tensors="pt")
    fast_ref = quiet(HFFast(), [stacked, photos["coffee"]], size=SMALL, return_tensors="pt")
    assert_same_outputs(fast, fast_ref)
    pil_gray = DeformableDetrImageProcessorFast()(PIL.Image.fromarray(camera), size=SMALL)
    height, width = pil_gray["pixel_values"].shape[2:]
    assert_close(pil_gray["pixel_values"], fast["pixel_values"][:1, :, :height, :width])


@pytest.mark.parametrize("speed", ["slow", "fast"])
def test_no_padding_parity(photos, speed):
    images = [photos["astronaut"], photos["coffee"]]
    annotations = [detection_annotation(i, *image.shape[:2]) for i, image in enumerate(images)]
    ours_cls, ref_cls = PAIRS[speed]
    ours = ours_cls()(images, annotations=copy.deepcopy(annotations), size=SMALL, do_pad=False)
    if speed == "slow":
        theirs = quiet(ref_cls(), images, annotations=copy.deepcopy(annotations), size=SMALL, do_pad=False)
        assert isinstance(ours["pixel_values"], list) and "pixel_mask" not in ours
        for mine, ref in zip(ours["pixel_values"], theirs["pixel_values"]):
            assert_close(mine, ref, what="pixel_values")
        for mine, ref in zip(ours["labels"], theirs["labels"]):
            for key in ref:
                assert_close(mine[key], ref[key], what=key)
    else:
        # the reference fast processor cannot stack unpadded images of different sizes: compare one by one
        for index, image in enumerate(images):
            theirs = quiet(
                ref_cls(), image, annotations=copy.deepcopy(annotations[index]), size=SMALL, do_pad=False,
                return_tensors="pt",
            )
            assert_close(ours["pixel_values"][index], theirs["pixel_values"][0], what="pixel_values")
            for key in theirs["labels"][0]:
                if key != "size":  # the reference leaves 'size' a tuple here
                    assert_close(ours["labels"][index][key], theirs["labels"][0][key], what=key)


def _panoptic_png(tmp_path, height: int, width: int) -> tuple[str, dict]:
    """A panoptic PNG with four segments whose ids use all three RGB channels, and its annotation."""
    ids = np.full((height, width), 1 + 256 * 2 + 65536 * 3, dtype=np.int64)  # "stuff" background
    ids[20:120, 30:200] = 7
    ids[height // 2 :, width // 3 : width // 3 + 90] = 300  # G channel in use
    yy, xx = np.mgrid[:height, :width]
    ids[(yy - 80) ** 2 + (xx - width + 90) ** 2 < 50**2] = 65536 * 5 + 17  # B channel in use
    ids[0, width - 1] = 42  # a one-pixel segment (zero-size box in pixel-index convention)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    PIL.Image.fromarray(rgb).save(tmp_path / "000123.png")
    segments = []
    for n, segment_id in enumerate([7, 300, 65536 * 5 + 17, 1 + 256 * 2 + 65536 * 3, 42]):
        segments.append(
            {"id": segment_id, "category_id": 10 + n, "iscrowd": int(n == 1), "area": float((ids == segment_id).sum())}
        )
    return str(tmp_path), {"image_id": 123, "file_name": "000123.png", "segments_info": segments}


@pytest.mark.parametrize("speed", ["slow", "fast"])
@pytest.mark.parametrize(
    "kwargs", [dict(size=SMALL), dict(size=SMALL, return_segmentation_masks=False), dict(do_resize=False)]
)
def test_panoptic_parity(photos, tmp_path, speed, kwargs):
    image = photos["chelsea"]
    masks_path, annotation = _panoptic_png(tmp_path, *image.shape[:2])
    ours_cls, ref_cls = PAIRS[speed]
    call = dict(annotations=annotation, masks_path=masks_path, format="coco_panoptic", return_tensors="pt", **kwargs)
    ours = ours_cls()([image], **copy.deepcopy(call))
    theirs = quiet(ref_cls(), [image], **copy.deepcopy(call))
    assert_same_outputs(ours, theirs)
    labels = ours["labels"][0]
    assert ("masks" in labels) == kwargs.get("return_segmentation_masks", True)
    assert to_numpy(labels["iscrowd"]).tolist() == [0, 1, 0, 0, 0]  # panoptic keeps crowd segments


def test_slow_and_fast_agree(photos, tmp_path):
    """Our two processors differ only by PIL vs torchvision interpolation (±a few uint8 levels)."""
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"], photos["camera"]]
    annotations = [detection_annotation(i, *image.shape[:2]) for i, image in enumerate(images)]
    slow = DeformableDetrImageProcessor()(
        images, copy.deepcopy(annotations), return_segmentation_masks=True, return_tensors="pt"
    )
    fast = DeformableDetrImageProcessorFast()(images, copy.deepcopy(annotations), return_segmentation_masks=True)
    level = 1 / 255 / min(DeformableDetrImageProcessor().image_std)  # one uint8 step after normalization
    difference = (slow["pixel_values"] - fast["pixel_values"]).abs()
    assert difference.max() <= 3 * level + 1e-6
    assert difference.mean() <= 0.2 * level
    assert torch.equal(slow["pixel_mask"], fast["pixel_mask"])
    for mine, other in zip(slow["labels"], fast["labels"]):
        assert set(mine) == set(other)
        for key in mine:
            if key == "masks":
                assert mine[key].shape == other[key].shape
                assert (mine[key] != other[key]).float().mean() <= 1e-3
            else:
                assert_close(mine[key], other[key], what=key)

    masks_path, annotation = _panoptic_png(tmp_path, *photos["chelsea"].shape[:2])
    call = dict(annotations=annotation, masks_path=masks_path, format="coco_panoptic", size=SMALL)
    slow = DeformableDetrImageProcessor()(photos["chelsea"], return_tensors="pt", **call)
    fast = DeformableDetrImageProcessorFast()(photos["chelsea"], **call)
    for key in slow["labels"][0]:
        if key == "masks":
            assert (slow["labels"][0][key] != fast["labels"][0][key]).float().mean() <= 1e-3
        else:
            assert_close(slow["labels"][0][key], fast["labels"][0][key], what=key)


@pytest.mark.parametrize("speed", ["slow", "fast"])
def test_keypoints_and_equal_size_batch_parity(photos, speed):
    """Keypoints pass through (filtered with their boxes); a 4-D batch of equal-size images."""
    image = photos["astronaut"]
    batch = np.stack([image, image[::-1].copy(), image[:, ::-1].copy()])
    annotations = []
    for image_id in range(3):
        annotation = detection_annotation(image_id, *image.shape[:2], crowd=False)
        for n, obj in enumerate(annotation["annotations"]):
            obj["keypoints"] = [10.0 + n, 20.0 + image_id, 2, 30.0, 40.0, 1]
        annotations.append(annotation)
    ours_cls, ref_cls = PAIRS[speed]
    inputs = batch if speed == "slow" else torch.from_numpy(batch).permute(0, 3, 1, 2)
    ours = ours_cls()(inputs, annotations=copy.deepcopy(annotations), size=SMALL, return_tensors="pt")
    theirs = quiet(ref_cls(), inputs, annotations=copy.deepcopy(annotations), size=SMALL, return_tensors="pt")
    assert_same_outputs(ours, theirs)
    assert tuple(ours["labels"][0]["keypoints"].shape) == (8, 3)  # 4 kept objects x 2 keypoints


def test_size_label_without_resize_or_padding(photos):
    for cls in (DeformableDetrImageProcessor, DeformableDetrImageProcessorFast):
        out = cls()(photos["chelsea"], annotations=detection_annotation(1, 300, 451), do_resize=False, do_pad=False)
        assert to_numpy(out["labels"][0]["size"]).tolist() == [300, 451]


def test_output_size_matches_reference_rounding():
    """Our output size against the reference's size functions on many random image sizes."""
    from transformers.image_processing_utils_fast import get_image_size_for_max_height_width
    from transformers.models.deformable_detr.image_processing_deformable_detr import get_size_with_aspect_ratio

    from models.processing.sizes import output_size

    rng = np.random.default_rng(0)
    for _ in range(2000):
        height, width = (int(v) for v in rng.integers(1, 3000, size=2))
        shortest = int(rng.integers(1, 1200))
        longest = int(rng.integers(shortest + 1, 2500))
        expected = get_size_with_aspect_ratio((height, width), shortest, longest)
        if min(expected) > 0:
            assert output_size(height, width, {"shortest_edge": shortest, "longest_edge": longest}) == tuple(expected)
        max_height, max_width = (int(v) for v in rng.integers(1, 2000, size=2))
        expected = get_image_size_for_max_height_width((height, width), max_height, max_width)
        if min(expected) > 0:
            assert output_size(height, width, {"max_height": max_height, "max_width": max_width}) == tuple(expected)
