"""RT-DETR's training augmentation (models.data.rt_detr_augmentation): boxes follow the pixels through zoom
out, IoU crop, flip and resize (checked on drawn rectangles), degenerate boxes leave with their labels and
areas, the output is the square, a seed gives one result, and the engine picks the pipeline by family."""

from __future__ import annotations

import random

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchvision.transforms import v2

from detr_blocks.box_ops import box_cxcywh_to_xyxy
from models.common.family import Family, ImageRecipe, check_family
from models.data.augmentation import Compose, RandomHorizontalFlip, RandomResize, ToNormalizedTensor, recipe_for_size, train_transforms
from models.data.rt_detr_augmentation import TorchvisionStep, rt_detr_train_transforms, sanitize_boxes
from models.engine.training import TrainingArgs, training_transforms
from models.registry import family

SIDE = 96
UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # [0, 1] pixels, as RT-DETR reads them


def target_of(boxes, labels, area=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if area is None else torch.tensor(area, dtype=torch.float32)
    return {"boxes": boxes, "class_labels": torch.tensor(labels), "area": area, "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "image_id": 7, "orig_size": torch.tensor([0, 0])}


@pytest.fixture(scope="module")
def astronaut():
    """A real photo (512 x 512) with hand-made boxes: the face, the flag patch, the helmet's top, a 2-pixel speck."""
    image = Image.fromarray(skimage.data.astronaut())
    return image, target_of([[170, 30, 290, 190], [350, 200, 440, 290], [140, 0, 330, 60], [400, 400, 402, 402]], [1, 2, 3, 4],
                            area=[12000.0, 5000.0, 9000.0, 3.0])


@pytest.fixture(scope="module")
def rectangles():
    """White rectangles on black (320 x 240), each box drawn exactly where its box says."""
    boxes = [[20, 30, 120, 110], [180, 40, 300, 150], [60, 150, 160, 230]]
    pixels = np.zeros((240, 320, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels), target_of(boxes, [0, 1, 2])


def pixel_boxes(target, side=SIDE):
    return box_cxcywh_to_xyxy(target["boxes"]) * side


def test_output_is_the_square_with_normalized_boxes_and_matching_entries(astronaut):
    transform = rt_detr_train_transforms(SIDE, **UNIT)
    for seed in range(12):
        pixels, target = transform(*astronaut, random.Random(seed))
        assert pixels.shape == (3, SIDE, SIDE) and 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
        boxes = box_cxcywh_to_xyxy(target["boxes"])
        assert bool(((boxes >= -1e-6) & (boxes <= 1 + 1e-6)).all()), boxes
        n = len(target["boxes"])
        assert len(target["class_labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
        assert 4 not in target["class_labels"].tolist()  # the 2-pixel speck is under a pixel at 96 x 96: always dropped
        assert target["image_id"] == 7 and target["size"].tolist() == [SIDE, SIDE]


def test_boxes_follow_the_drawn_rectangles(rectangles):
    """Through photometric distortion, zoom out, IoU crop, flip and the square resize, every box still
    covers white pixels and its sides inside the image lie on the rectangle's edge (dark just outside)."""
    transform = rt_detr_train_transforms(SIDE, **UNIT)
    geometries = set()
    for seed in range(40):
        pixels, target = transform(*rectangles, random.Random(seed))
        gray = pixels.mean(0)  # white stays >= 0.43 and black <= 0.17 under the distortion's ranges
        boxes = pixel_boxes(target)
        geometries.add(tuple(boxes.round().flatten().tolist()))
        for x0, y0, x1, y1 in boxes.tolist():
            inner = gray[int(np.ceil(y0)) + 1: int(np.floor(y1)) - 1, int(np.ceil(x0)) + 1: int(np.floor(x1)) - 1]
            if inner.numel():
                assert float(inner.min()) > 0.3, (seed, (x0, y0, x1, y1))
            cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
            for outside in ((cy, int(np.floor(x0)) - 2), (cy, int(np.ceil(x1)) + 1), (int(np.floor(y0)) - 2, cx), (int(np.ceil(y1)) + 1, cx)):
                if 0 <= outside[0] < SIDE and 0 <= outside[1] < SIDE:
                    assert float(gray[outside]) < 0.3, (seed, (x0, y0, x1, y1), outside)
    assert len(geometries) > 10  # the boxes really moved: zoom, crop and flip vary with the seed


def test_area_keeps_its_share_of_each_box(astronaut):
    """``area`` (the object's area) scales with its box through every step, clipped boxes included."""
    image, target = astronaut
    share = target["area"] / ((target["boxes"][:, 2] - target["boxes"][:, 0]) * (target["boxes"][:, 3] - target["boxes"][:, 1]))
    transform = rt_detr_train_transforms(SIDE, **UNIT)
    for seed in range(12):
        _, out = transform(image, target, random.Random(seed))
        wh = out["boxes"][:, 2:] * SIDE
        torch.testing.assert_close(out["area"] / (wh[:, 0] * wh[:, 1]), share[out["class_labels"] - 1], rtol=1e-4, atol=0)


def test_degenerate_boxes_leave_with_their_labels_and_areas(astronaut):
    image, _ = astronaut
    target = target_of([[10, 10, 50, 50], [60, 60, 60.5, 90], [100, 100, 140, 100.4], [200, 200, 201, 201]], [1, 2, 3, 4],
                       area=[1.0, 2.0, 3.0, 4.0])
    target["iscrowd"] = torch.tensor([0, 1, 0, 1])
    out_image, out = sanitize_boxes(1.0)(image, target, random.Random(0))
    assert out_image is image
    assert out["boxes"].tolist() == [[10, 10, 50, 50], [200, 200, 201, 201]]
    assert out["class_labels"].tolist() == [1, 4] and out["area"].tolist() == [1.0, 4.0] and out["iscrowd"].tolist() == [0, 1]
    assert type(out["boxes"]) is torch.Tensor and out["image_id"] == 7


def test_photometric_distortion_leaves_boxes_alone(astronaut):
    image, target = astronaut
    out_image, out = TorchvisionStep(v2.RandomPhotometricDistort(p=1.0))(image, target, random.Random(1))
    assert out_image.size == image.size and np.abs(np.asarray(out_image, np.int16) - np.asarray(image, np.int16)).max() > 0
    for key in ("boxes", "class_labels", "area", "iscrowd"):
        assert torch.equal(out[key], target[key]), key


def test_the_same_seed_gives_the_same_result_and_the_global_generator_is_untouched(astronaut):
    transform = rt_detr_train_transforms(SIDE, **UNIT)
    state = torch.get_rng_state()
    first = transform(*astronaut, random.Random(5))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global generator has no say
    again = transform(*astronaut, random.Random(5))
    assert torch.equal(first[0], again[0])
    for key in ("boxes", "class_labels", "area"):
        assert torch.equal(first[1][key], again[1][key]), key
    others = [transform(*astronaut, random.Random(seed)) for seed in range(6, 10)]
    assert any(not torch.equal(first[0], other[0]) for other in others)


def test_an_image_without_boxes_passes(astronaut):
    pixels, target = rt_detr_train_transforms(SIDE, **UNIT)(astronaut[0], target_of([], []), random.Random(0))
    assert pixels.shape == (3, SIDE, SIDE) and target["boxes"].shape == (0, 4) and len(target["class_labels"]) == 0


def test_training_transforms_picks_the_familys_augmentation(astronaut):
    image, target = astronaut
    args = TrainingArgs(data="unused", out="unused", image_size=SIDE, max_size=160, multiscale=False)
    ours = training_transforms(args, family("rt-detr").images)
    assert any(isinstance(step, TorchvisionStep) for step in ours.transforms)
    expected = rt_detr_train_transforms(SIDE, **UNIT)
    for seed in range(3):
        a, b = ours(image, target, random.Random(seed)), expected(image, target, random.Random(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])

    # Deformable DETR and DINO: the flip and fixed resize, or the multi-scale recipe, as before
    for name in ("deformable-detr", "dino"):
        images = family(name).images
        assert images.augment == "detr"
        fixed = Compose([RandomHorizontalFlip(), RandomResize([SIDE], 160), ToNormalizedTensor()])
        multiscale = train_transforms(**recipe_for_size(SIDE, 160), flip=True)
        for before, run_args in ((fixed, args), (multiscale, TrainingArgs(data="unused", out="unused", image_size=SIDE, max_size=160))):
            now = training_transforms(run_args, images)
            assert not any(isinstance(step, TorchvisionStep) for step in now.transforms)
            for seed in range(4):
                a, b = now(image, target, random.Random(seed)), before(image, target, random.Random(seed))
                assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and torch.equal(a[1]["area"], b[1]["area"])


@pytest.mark.parametrize("images, message", [
    (ImageRecipe(augment="ssd"), "images.augment must be one of"),
    (ImageRecipe(augment="rt_detr"), "needs resize 'square'"),
])
def test_check_family_validates_the_augmentation(images, message):
    with pytest.raises(ValueError, match=message):
        check_family(Family("x", int, int, images=images), "test")
    check_family(Family("x", int, int, images=ImageRecipe(resize="square", augment="rt_detr")), "test")
