"""Synthetic dataset, COCO loader and augmentations (checked against brute force and transformers)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.augmentation import collate, crop, eval_transforms, hflip, recipe_for_size, resize, train_transforms
from models.data.coco import CocoDetection, detections_to_coco, resolve_split
from models.data.image_files import ImageError
from models.data.synthetic import SHAPES, SyntheticSpec, generate_image, write_synthetic_coco
from models.processing.sizes import resized_shape

SMALL = SyntheticSpec(image_size=(48, 64), classes=("circle", "square", "triangle", "ring"), max_objects=4)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_coco(root, {"train": 6, "val": 3}, SMALL, seed=3)
    return root


# ------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_seed_dependent(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_synthetic_coco(a, {"train": 3}, SMALL, seed=1)
    write_synthetic_coco(b, {"train": 3}, SMALL, seed=1)
    write_synthetic_coco(c, {"train": 3}, SMALL, seed=2)
    for i in range(3):
        name = f"images/train/{i:06d}.png"
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "annotations/train.json").read_text() == (b / "annotations/train.json").read_text()
    assert any((a / f"images/train/{i:06d}.png").read_bytes() != (c / f"images/train/{i:06d}.png").read_bytes() for i in range(3))


def test_synthetic_image_independent_of_split_size(tmp_path):
    # image i depends on (seed, split, i) only: a larger split starts with the same images
    image, objects = generate_image(SMALL, 5, "train", 2)
    write_synthetic_coco(tmp_path, {"train": 4}, SMALL, seed=5)
    stored = np.asarray(Image.open(tmp_path / "images/train/000002.png"))
    assert np.array_equal(stored, np.asarray(image))
    coco = json.loads((tmp_path / "annotations/train.json").read_text())
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 3]
    assert boxes == [list(o.box) for o in objects]


@pytest.mark.parametrize("index", range(4))
def test_synthetic_boxes_enclose_the_drawn_shape(index):
    # brute force: draw each object alone on a flat background and find its pixels
    spec = SyntheticSpec(image_size=(64, 64), classes=SHAPES, max_objects=1, min_objects=1)
    image, objects = generate_image(spec, 11, "val", index)
    (obj,) = objects
    from PIL import ImageDraw

    from models.data.synthetic import _SUPERSAMPLE, _draw_shape

    canvas = Image.new("RGB", (64 * _SUPERSAMPLE, 64 * _SUPERSAMPLE))
    _draw_shape(ImageDraw.Draw(canvas), spec.classes[obj.label], obj.box, (255, 255, 255), _SUPERSAMPLE)
    mask = np.asarray(canvas.resize((64, 64), Image.BOX))[..., 0] > 0
    ys, xs = np.nonzero(mask)
    x, y, w, h = obj.box
    assert xs.min() >= x - 0.5 and xs.max() <= x + w - 0.5 + 1e-6
    assert ys.min() >= y - 0.5 and ys.max() <= y + h - 0.5 + 1e-6
    # the shape reaches (nearly) every side of its box
    assert xs.min() <= x + 1 and xs.max() >= x + w - 2 and ys.min() <= y + 1 and ys.max() >= y + h - 2


def test_synthetic_annotations_are_valid_coco(small_data):
    from pycocotools.coco import COCO

    coco = COCO(str(small_data / "annotations/train.json"))
    assert len(coco.getImgIds()) == 6
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(SMALL.classes)
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 48 and w > 0 and h > 0


@pytest.mark.parametrize("kwargs", [{"classes": ("hexagon",)}, {"classes": ()}, {"image_size": (8, 8)},
                                    {"min_objects": 3, "max_objects": 2}, {"category_ids": (1,)}, {"max_iou": 1.0}])
def test_synthetic_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        SyntheticSpec(**kwargs)


# ---------------------------------------------------------------------------------------- loader
def test_loader_maps_non_contiguous_categories_and_back(tmp_path):
    spec = SyntheticSpec(image_size=(40, 40), classes=("circle", "square", "triangle"), category_ids=(11, 3, 7))
    write_synthetic_coco(tmp_path, {"val": 4}, spec, seed=0)
    dataset = CocoDetection(*resolve_split(tmp_path, "val"))
    assert dataset.category_ids == [3, 7, 11]
    assert dataset.class_names == ["square", "triangle", "circle"]
    coco = dataset.coco
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.size == (40, 40)
        image_id = dataset.images[index]["id"]
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        assert sorted(dataset.label_to_category_id(int(l)) for l in target["class_labels"]) == sorted(a["category_id"] for a in anns)
        # back to COCO records: boxes and ids round-trip
        result = {"scores": torch.ones(len(anns)), "labels": target["class_labels"], "boxes": target["boxes"]}
        records = detections_to_coco(dataset, [image_id], [result])
        got = sorted((r["category_id"], tuple(round(v, 4) for v in r["bbox"])) for r in records)
        want = sorted((a["category_id"], tuple(round(float(v), 4) for v in a["bbox"])) for a in anns)
        assert got == want


def _write_coco(root, images, annotations, categories=({"id": 1, "name": "a"},)):
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": list(categories)}
    (root / "annotations" / "val.json").write_text(json.dumps(data))
    return root / "images" / "val", root / "annotations" / "val.json"


def test_loader_errors_name_the_file(tmp_path):
    images_dir, ann = _write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], [])
    dataset = CocoDetection(images_dir, ann)
    with pytest.raises(FileNotFoundError, match="a.png"):
        dataset[0]
    (images_dir / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="a.png.*cannot be read"):
        dataset[0]
    Image.new("RGB", (9, 8)).save(images_dir / "a.png")
    with pytest.raises(ValueError, match="a.png.*9x8"):
        dataset[0]


def _broken_image_folder(tmp_path):
    """A COCO split whose four images are: fine, truncated, not an image, missing."""
    good = tmp_path / "encoded.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(good)
    encoded = good.read_bytes()
    names = ["fine.png", "truncated.png", "text.png", "missing.png"]
    images = [{"id": i + 1, "file_name": name, "width": 8, "height": 8} for i, name in enumerate(names)]
    images_dir, ann = _write_coco(tmp_path, images, [])
    (images_dir / "fine.png").write_bytes(encoded)
    (images_dir / "truncated.png").write_bytes(encoded[: len(encoded) // 2])
    (images_dir / "text.png").write_text("this is not an image\n")
    return CocoDetection(images_dir, ann)


def _first_error(dataset, index, num_workers):
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [index]), batch_size=1, num_workers=num_workers, collate_fn=list
    )
    with pytest.raises(ImageError) as caught:
        next(iter(loader))
    return caught.value


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize(
    "index, name, reason",
    [(1, "truncated.png", "cannot be read"), (2, "text.png", "cannot be read"), (3, "missing.png", "does not exist")],
)
def test_unreadable_image_is_one_clear_line_also_through_workers(tmp_path, num_workers, index, name, reason):
    """Reported: with DataLoader workers, a bad image gave a 2.5 kB line holding a flattened traceback."""
    dataset = _broken_image_folder(tmp_path)
    assert dataset[0][0].size == (8, 8)
    error = _first_error(dataset, index, num_workers)
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    assert str(tmp_path / "images" / "val" / name) in message and reason in message
    assert len(message) < 300, message
    if num_workers:
        assert message.endswith("(in DataLoader worker process 0)")
    if name == "missing.png":
        assert isinstance(error, FileNotFoundError)


def test_image_error_keeps_an_ordinary_message():
    text = "Caught nothing: a message that only looks like a worker's\nsecond line"
    assert str(ImageError(text)) == text
    assert str(ImageError("image 'a.png' cannot be read: broken")) == "image 'a.png' cannot be read: broken"


@pytest.mark.parametrize(
    "annotations, message",
    [
        ([{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]}], "annotation 5 references image id 2"),
        ([{"id": 6, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}], "category_id 9"),
        ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 2]}], "annotation 7 box .* outside image 'a.png'"),
        ([{"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2]}], "annotation 8 needs 'bbox'"),
        ([{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, -2, 2]}], "annotation 9 has a negative box"),
    ],
)
def test_loader_rejects_bad_annotations(tmp_path, annotations, message):
    images_dir, ann = _write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], annotations)
    with pytest.raises(ValueError, match=message):
        CocoDetection(images_dir, ann)


def test_loader_rejects_bad_json(tmp_path):
    images_dir, ann = _write_coco(tmp_path, [], [])
    ann.write_text("{ not json")
    with pytest.raises(ValueError, match="val.json.*not valid JSON"):
        CocoDetection(images_dir, ann)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        CocoDetection(images_dir, ann)


def test_resolve_split_lists_what_it_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        resolve_split(tmp_path, "val")
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert resolve_split(tmp_path, "val") == (tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")


# ---------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("width, height, size, max_size", [(640, 480, 800, 1333), (480, 640, 800, 1333), (1000, 200, 800, 1333),
                                                           (64, 64, 64, 64), (333, 500, 97, 160), (500, 333, 300, None)])
def test_resized_shape_matches_transformers(width, height, size, max_size):
    from transformers.models.detr.image_processing_detr import get_size_with_aspect_ratio

    expected_h, expected_w = get_size_with_aspect_ratio((height, width), size, max_size)
    assert resized_shape(width, height, size, max_size) == (expected_w, expected_h)


def _box_of_mask(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("op", ["flip", "crop", "resize"])
def test_geometric_transforms_move_boxes_like_pixels(op):
    # brute force: a white rectangle on black; the transformed box must be the bbox of the transformed pixels
    rng = random.Random(0)
    for _ in range(5):
        w, h = rng.randint(20, 60), rng.randint(20, 60)
        x0, y0 = rng.randint(0, w - 5), rng.randint(0, h - 5)
        x1, y1 = rng.randint(x0 + 2, w), rng.randint(y0 + 2, h)
        array = np.zeros((h, w, 3), dtype=np.uint8)
        array[y0:y1, x0:x1] = 255
        image = Image.fromarray(array)
        target = {"boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), "class_labels": torch.tensor([1]),
                  "area": torch.tensor([float((x1 - x0) * (y1 - y0))]), "iscrowd": torch.tensor([0])}
        if op == "flip":
            out, t = hflip(image, target)
        elif op == "crop":
            top, left = rng.randint(0, y0), rng.randint(0, x0)
            out, t = crop(image, target, top, left, rng.randint(y0 - top + 1, h - top), rng.randint(x0 - left + 1, w - left))
        else:
            out, t = resize(image, target, 2 * min(w, h))
        mask = np.asarray(out)[..., 0] > 127
        if op == "resize":  # bilinear edges: compare within a pixel
            assert torch.allclose(t["boxes"][0], torch.tensor(_box_of_mask(mask), dtype=torch.float32), atol=1.0)
        else:
            assert t["boxes"][0].tolist() == [float(v) for v in _box_of_mask(mask)]
            assert t["area"][0] == float(mask.sum())


def test_crop_drops_boxes_outside():
    image = Image.new("RGB", (50, 50))
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 45.0, 45.0]]), "class_labels": torch.tensor([0, 1])}
    _, t = crop(image, target, 20, 20, 30, 30)
    assert t["class_labels"].tolist() == [1]
    assert t["boxes"].tolist() == [[10.0, 10.0, 25.0, 25.0]]


def test_train_transforms_are_reproducible_and_normalize_boxes(small_data):
    dataset = CocoDetection(*resolve_split(small_data, "train"))
    transforms = train_transforms(**recipe_for_size(48))
    image, target = dataset[0]
    a = transforms(image, target, random.Random(7))
    b = transforms(image, target, random.Random(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    pixels, t = a
    assert pixels.shape[0] == 3 and t["size"].tolist() == list(pixels.shape[1:])
    assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()


def test_collate_pads_and_masks():
    items = [(torch.ones(3, 4, 6), {"boxes": torch.zeros(0, 4)}), (torch.ones(3, 5, 3), {"boxes": torch.zeros(0, 4)})]
    batch = collate(items)
    assert batch["pixel_values"].shape == (2, 3, 5, 6)
    assert batch["pixel_mask"][0].sum() == 24 and batch["pixel_mask"][1].sum() == 15
    assert batch["pixel_values"][0, :, 4:].abs().sum() == 0 and batch["pixel_mask"][0, 4:].sum() == 0


def test_eval_transform_matches_image_processor(small_data):
    from models import DeformableDetrImageProcessor

    dataset = CocoDetection(*resolve_split(small_data, "val"))
    image, target = dataset[0]
    ours, _ = eval_transforms(96, 160)(image, target, random.Random(0))
    theirs = DeformableDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})(images=[image], return_tensors="pt")
    assert ours.shape == theirs["pixel_values"].shape[1:]
    assert torch.allclose(ours, theirs["pixel_values"][0], atol=1e-4)
