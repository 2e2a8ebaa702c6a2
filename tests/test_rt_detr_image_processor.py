"""RT-DETR image processors against transformers 4.57 (slow vs slow, fast vs fast) on real photographs.

Photographs come from scikit-image, COCO detection annotations are written here. Pixel values and labels must
agree within 1e-5 (same resize library on each side: PIL for the slow pair, torchvision for the fast pair);
our slow and fast processors must agree within what PIL vs torchvision interpolation allows (a few uint8 levels).
Post-processing is compared on random logits and boxes.
"""

from __future__ import annotations

import copy
import json
import types
import warnings

import numpy as np
import pytest
import skimage.data
import torch

transformers = pytest.importorskip("transformers")
from transformers import RTDetrImageProcessor as TheirSlow  # noqa: E402
from transformers import RTDetrImageProcessorFast as TheirFast  # noqa: E402

from models import RTDetrImageProcessor, RTDetrImageProcessorFast  # noqa: E402

torch.set_num_threads(1)
SPEEDS = {"slow": (RTDetrImageProcessor, TheirSlow), "fast": (RTDetrImageProcessorFast, TheirFast)}
SMALL = {"height": 256, "width": 320}
ATOL = 1e-5


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    # astronaut 512x512, coffee 400x600, chelsea 300x451
    return [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]


# (x, y, w, h as fractions of the image, category, iscrowd): inside, crossing the right/bottom edge,
# starting above-left of the image, zero width (dropped), crowd (dropped), right of the image (dropped)
OBJECTS = [
    ((0.10, 0.20, 0.30, 0.25), 1, 0),
    ((0.70, 0.55, 0.50, 0.60), 17, 0),
    ((-0.05, -0.02, 0.20, 0.15), 3, 0),
    ((0.40, 0.40, 0.00, 0.10), 4, 0),
    ((0.05, 0.05, 0.10, 0.10), 9, 1),
    ((1.02, 0.10, 0.05, 0.05), 5, 0),
    ((0.35, 0.50, 0.20, 0.30), 2, 0),
]
KEPT_CLASSES = [1, 17, 3, 2]


def coco_annotation(image_id: int, image: np.ndarray, keypoints: bool = False) -> dict:
    height, width = image.shape[:2]
    objects = []
    for n, ((x, y, w, h), category, crowd) in enumerate(OBJECTS):
        box = [x * width, y * height, w * width, h * height]
        obj = {"id": n, "bbox": box, "category_id": category, "iscrowd": crowd, "area": 0.8 * box[2] * box[3]}
        if keypoints:
            obj["keypoints"] = [box[0] + 1.0, box[1] + 2.0, 2, box[0] + 3.0, box[1] + 4.0, 1]
        objects.append(obj)
    return {"image_id": image_id, "annotations": objects}


def as_array(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def check_equal(mine, theirs, what: str, atol: float = ATOL) -> None:
    mine, theirs = as_array(mine), as_array(theirs)
    assert mine.shape == theirs.shape, f"{what}: {mine.shape} vs {theirs.shape}"
    np.testing.assert_allclose(mine.astype(np.float64), theirs.astype(np.float64), rtol=0, atol=atol, err_msg=what)


def run_theirs(processor, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(*args, **kwargs)


def check_same_batch(ours, theirs) -> None:
    assert set(ours) == set(theirs), f"keys {sorted(ours)} vs {sorted(theirs)}"
    check_equal(ours["pixel_values"], theirs["pixel_values"], "pixel_values")
    assert as_array(ours["pixel_values"]).dtype == as_array(theirs["pixel_values"]).dtype
    if "pixel_mask" in theirs:
        check_equal(ours["pixel_mask"], theirs["pixel_mask"], "pixel_mask")
    for index, (mine, ref) in enumerate(zip(ours.get("labels", []), theirs.get("labels", []))):
        assert set(mine) == set(ref), f"labels[{index}]: {sorted(mine)} vs {sorted(ref)}"
        for key in ref:
            check_equal(mine[key], ref[key], f"labels[{index}][{key!r}]")
            if key in ("class_labels", "image_id", "orig_size", "iscrowd"):
                assert as_array(mine[key]).dtype == np.int64, key


CASES = [
    pytest.param({}, id="defaults-640"),
    pytest.param({"size": SMALL, "do_normalize": True}, id="imagenet-normalize"),
    pytest.param({"size": SMALL, "resample": 3}, id="bicubic"),
    pytest.param({"size": SMALL, "resample": 0}, id="nearest"),
    pytest.param({"size": SMALL, "do_convert_annotations": False}, id="absolute-boxes"),
    pytest.param({"size": SMALL, "do_rescale": False}, id="uint8-out"),
    pytest.param(
        {"size": SMALL, "do_normalize": True, "image_mean": 0.5, "image_std": [0.2, 0.3, 0.4], "rescale_factor": 1 / 200},
        id="custom-normalize",
    ),
    pytest.param({"size": {"shortest_edge": 200, "longest_edge": 300}, "do_pad": True}, id="aspect-and-pad"),
    pytest.param(
        {"size": {"max_height": 220, "max_width": 260}, "do_pad": True, "pad_size": {"height": 240, "width": 280}},
        id="max-size-pad-size",
    ),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("speed", sorted(SPEEDS))
def test_pixels_and_labels_match_transformers(photos, speed, kwargs):
    annotations = [coco_annotation(7 + i, image) for i, image in enumerate(photos)]
    annotations[1] = {"image_id": 8, "annotations": []}  # an image without objects
    ours_class, their_class = SPEEDS[speed]
    ours = ours_class()(photos, annotations=copy.deepcopy(annotations), return_tensors="pt", **kwargs)
    theirs = run_theirs(their_class(), photos, annotations=copy.deepcopy(annotations), return_tensors="pt", **kwargs)
    check_same_batch(ours, theirs)
    assert ("pixel_mask" in ours) == bool(kwargs.get("do_pad"))
    assert as_array(ours["labels"][0]["class_labels"]).tolist() == KEPT_CLASSES
    assert as_array(ours["labels"][0]["orig_size"]).tolist() == [512, 512]


@pytest.mark.parametrize("speed", sorted(SPEEDS))
def test_keypoints_and_pil_inputs_match_transformers(photos, speed):
    import PIL.Image

    images = [PIL.Image.fromarray(image) for image in photos[:2]]
    annotations = [coco_annotation(i, image, keypoints=True) for i, image in enumerate(photos[:2])]
    ours_class, their_class = SPEEDS[speed]
    ours = ours_class()(images, annotations=copy.deepcopy(annotations), size=SMALL, return_tensors="pt")
    theirs = run_theirs(their_class(), images, annotations=copy.deepcopy(annotations), size=SMALL, return_tensors="pt")
    check_same_batch(ours, theirs)
    assert tuple(ours["labels"][0]["keypoints"].shape) == (2 * len(KEPT_CLASSES), 3)


def test_slow_without_resize_or_tensors_matches_transformers(photos):
    """Images of different sizes come back as a list of channels-first arrays, with no pixel_mask."""
    annotations = [coco_annotation(i, image) for i, image in enumerate(photos)]
    ours = RTDetrImageProcessor()(photos, annotations=copy.deepcopy(annotations), do_resize=False)
    theirs = run_theirs(TheirSlow(), photos, annotations=copy.deepcopy(annotations), do_resize=False)
    assert isinstance(ours["pixel_values"], list) and "pixel_mask" not in ours
    for index, (mine, ref) in enumerate(zip(ours["pixel_values"], theirs["pixel_values"])):
        check_equal(mine, ref, f"pixel_values[{index}]")
    for mine, ref in zip(ours["labels"], theirs["labels"]):
        for key in ref:  # transformers has no 'size' without resizing; ours says the unresized size
            check_equal(mine[key], ref[key], key)
        assert as_array(mine["size"]).tolist() == as_array(mine["orig_size"]).tolist()


def test_int_size_is_a_square(photos):
    """An int size is {"height": s, "width": s}, as transformers' slow preprocess reads it."""
    theirs = run_theirs(TheirSlow(), photos[2], size=200, return_tensors="pt")
    for ours_class in (RTDetrImageProcessor, RTDetrImageProcessorFast):
        assert ours_class(size=200).size == {"height": 200, "width": 200}
        ours = ours_class()(photos[2], size=200, return_tensors="pt")
        assert tuple(ours["pixel_values"].shape) == tuple(theirs["pixel_values"].shape) == (1, 3, 200, 200)
    check_equal(RTDetrImageProcessor()(photos[2], size=200, return_tensors="pt")["pixel_values"], theirs["pixel_values"], "slow")


def test_slow_and_fast_agree(photos):
    """Ours slow and fast differ only by PIL vs torchvision interpolation."""
    annotations = [coco_annotation(i, image) for i, image in enumerate(photos)]
    slow = RTDetrImageProcessor()(photos, copy.deepcopy(annotations), return_tensors="pt")
    fast = RTDetrImageProcessorFast()(photos, copy.deepcopy(annotations))
    difference = (slow["pixel_values"] - fast["pixel_values"]).abs()
    level = 1 / 255
    assert difference.max() <= 3 * level + 1e-6 and difference.mean() <= 0.2 * level
    for mine, other in zip(slow["labels"], fast["labels"]):
        assert set(mine) == set(other)
        for key in mine:
            check_equal(mine[key], other[key], key)


# ---- post-processing -------------------------------------------------------------------------------------


def model_outputs(batch: int, queries: int, classes: int, seed: int) -> types.SimpleNamespace:
    generator = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        logits=torch.randn(batch, queries, classes, generator=generator) * 2.5,
        pred_boxes=torch.rand(batch, queries, 4, generator=generator),
    )


SIZES = {
    "none": lambda batch: None,
    "int-tensor": lambda batch: torch.tensor([[640, 640], [300, 451], [512, 800]][:batch]),
    "float-tensor": lambda batch: torch.tensor([[480.0, 640.0], [300.5, 451.0], [800.0, 1199.0]][:batch]),
    "list": lambda batch: [(480, 640), (300, 451), (800, 1199)][:batch],
}


def classes_softmax(function):
    """transformers calls ``softmax(logits)`` with no ``dim``, which torch takes as the batch axis for a 3-D
    tensor; the reference is run with that one call made over the classes, the axis its code means."""

    def over_classes(input, dim=None, *args, **kwargs):
        return function(input, -1 if dim is None else dim, *args, **kwargs)

    return over_classes


@pytest.mark.parametrize("use_focal_loss", [True, False])
@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize(
    "batch,queries,classes,threshold",
    [(2, 300, 80, 0.5), (3, 40, 7, 0.3), (1, 12, 3, 0.0), (2, 20, 5, 0.9999)],
)
def test_post_processing_matches_transformers(monkeypatch, batch, queries, classes, threshold, sizes, use_focal_loss):
    outputs = model_outputs(batch, queries, classes, seed=queries * classes)
    target_sizes = SIZES[sizes](batch)
    monkeypatch.setattr(torch.nn.functional, "softmax", classes_softmax(torch.nn.functional.softmax))
    for ours_class, their_class in SPEEDS.values():
        ours = ours_class().post_process_object_detection(
            outputs, threshold=threshold, target_sizes=target_sizes, use_focal_loss=use_focal_loss
        )
        theirs = their_class().post_process_object_detection(
            outputs, threshold=threshold, target_sizes=target_sizes, use_focal_loss=use_focal_loss
        )
        assert len(ours) == len(theirs) == batch
        for mine, ref in zip(ours, theirs):
            assert set(mine) == {"scores", "labels", "boxes"}
            assert torch.equal(mine["labels"], ref["labels"])
            check_equal(mine["scores"], ref["scores"], "scores", atol=0)
            check_equal(mine["boxes"], ref["boxes"], "boxes", atol=1e-4)


def test_post_processing_scores_brute_force():
    """Sigmoid branch: the Q best of all Q x C pairs; softmax branch: each query's best real class."""
    outputs = model_outputs(2, 6, 4, seed=3)
    processor = RTDetrImageProcessor()
    focal = processor.post_process_object_detection(outputs, threshold=-1.0)
    softmax = processor.post_process_object_detection(outputs, threshold=-1.0, use_focal_loss=False)
    for b in range(2):
        pairs = sorted(
            ((torch.sigmoid(outputs.logits[b, q, c]).item(), q, c) for q in range(6) for c in range(4)), reverse=True
        )[:6]
        assert focal[b]["labels"].tolist() == [c for _, _, c in pairs]
        np.testing.assert_allclose(focal[b]["scores"].numpy(), [s for s, _, _ in pairs], rtol=1e-6)
        probs = outputs.logits[b].double().softmax(-1)[:, :-1]
        np.testing.assert_allclose(softmax[b]["scores"].numpy(), probs.max(-1).values.numpy(), rtol=1e-6)
        assert softmax[b]["labels"].tolist() == probs.argmax(-1).tolist()
        cx, cy, w, h = outputs.pred_boxes[b].unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        check_equal(softmax[b]["boxes"], corners, "boxes")
    # the shared function's softmax branch with top_k below the number of queries: the best queries, best first
    from models.processing.postprocess import post_process_object_detection

    best = post_process_object_detection(outputs, threshold=-1.0, top_k=3, use_focal_loss=False)
    for b in range(2):
        probs = outputs.logits[b].softmax(-1)[:, :-1].max(-1).values
        assert torch.equal(best[b]["scores"], probs.sort(descending=True).values[:3])


# ---- saving and loading ----------------------------------------------------------------------------------

OPTIONS = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"size": {"height": 480, "width": 512}, "do_normalize": True, "do_pad": True, "pad_size": {"height": 512, "width": 512},
         "resample": 3, "do_convert_annotations": False},
        id="changed",
    ),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("speed", sorted(SPEEDS))
def test_save_load_round_trip_through_transformers(tmp_path, photos, speed, options):
    ours_class, their_class = SPEEDS[speed]
    ours = ours_class(**options)
    their_defaults = their_class(**options).to_dict()
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == their_class.__name__
    # every key we write has transformers' value; the keys only transformers writes hold None / defaults
    for key, value in their_defaults.items():
        if key in saved:
            assert saved[key] == (list(value) if isinstance(value, tuple) else value), key
        else:
            assert value in (None, False, "channels_first"), key

    theirs = their_class.from_pretrained(tmp_path / "ours")
    assert type(theirs) is their_class
    theirs.save_pretrained(tmp_path / "theirs")
    back = ours_class.from_pretrained(tmp_path / "theirs")
    assert type(back) is ours_class
    loaded = back.to_dict()
    assert {key: loaded[key] for key in ours.to_dict()} == ours.to_dict()
    # what else comes back: the fast keywords transformers writes with their default values
    assert {key: loaded[key] for key in set(loaded) - set(ours.to_dict())} in (
        {}, {"data_format": "channels_first", "default_to_square": False}
    )
    annotation = coco_annotation(1, photos[2])
    mine = back(photos[2], annotations=copy.deepcopy(annotation), return_tensors="pt")
    check_same_batch(mine, run_theirs(theirs, photos[2], annotations=copy.deepcopy(annotation), return_tensors="pt"))


@pytest.mark.parametrize(
    "options",
    [{}, {"do_normalize": True}, {"do_convert_annotations": None, "do_normalize": True}, {"size": None, "do_pad": True}],
)
def test_constructor_options_match_transformers(options):
    """The options ours and transformers' slow processor store from the same keywords (``None`` included)."""
    theirs = TheirSlow(**options).to_dict()
    for ours_class in (RTDetrImageProcessor, RTDetrImageProcessorFast):
        ours = ours_class(**options).to_dict()
        assert {key: theirs[key] for key in ours if key != "image_processor_type"} == {
            key: value for key, value in ours.items() if key != "image_processor_type"
        }


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processor_class", [RTDetrImageProcessor, RTDetrImageProcessorFast])
def test_bad_input_is_named(photos, processor_class):
    processor = processor_class()
    image = photos[2]
    with pytest.raises(ValueError, match="format"):
        processor_class(format="coco_panoptic")
    with pytest.raises(ValueError, match="format"):
        processor(image, annotations=coco_annotation(1, image), format="coco_panoptic")
    with pytest.raises(ValueError, match="size"):
        processor_class(size={"height": 0, "width": 640})
    with pytest.raises(ValueError, match="size"):
        processor(image, size={"height": 640})
    with pytest.raises(ValueError, match="rescale_factor"):
        processor(image, rescale_factor=-1.0)
    with pytest.raises(ValueError, match="annotations"):
        processor(image, annotations={"image_id": 1, "annotations": [{"category_id": 1, "area": 1.0}]})
    with pytest.raises(ValueError, match="annotations"):
        processor([image, image], annotations=[coco_annotation(1, image)])
    with pytest.raises(ValueError, match="images"):
        processor("not an image")
    with pytest.warns(UserWarning, match="not_an_option"):
        processor(image, size=SMALL, not_an_option=1)
    with pytest.warns(UserWarning, match="return_segmentation_masks"):
        out = processor(image, annotations=coco_annotation(1, image), size=SMALL, return_segmentation_masks=True)
    assert "masks" not in out["labels"][0]

    outputs = model_outputs(2, 10, 4, seed=0)
    with pytest.raises(ValueError, match="threshold"):
        processor.post_process_object_detection(outputs, threshold="high")
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_object_detection(outputs, target_sizes=[(100, 100)])
    with pytest.raises(ValueError, match="use_focal_loss"):
        processor.post_process_object_detection(outputs, use_focal_loss="yes")
    with pytest.raises(ValueError, match="pred_boxes"):
        processor.post_process_object_detection({"logits": outputs.logits, "pred_boxes": outputs.pred_boxes[:, :5]})
    with pytest.raises(ValueError, match="logits"):
        processor.post_process_object_detection(model_outputs(1, 5, 1, seed=0), use_focal_loss=False)
