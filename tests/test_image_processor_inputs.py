"""Input handling of the image processors: accepted forms, documented conversions and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from models.processing.feature_extraction import DeformableDetrFeatureExtractor
from models.processing.image_processing import DeformableDetrImageProcessor
from models.processing.image_processing_fast import DeformableDetrImageProcessorFast
from models.processing.sizes import output_size

PROCESSORS = [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast]
SMALL = {"shortest_edge": 40, "longest_edge": 64}


def rgb(height: int = 30, width: int = 45, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box(bbox, category_id=1, **extra):
    return {"bbox": bbox, "category_id": category_id, "area": 10.0, **extra}


# ---- accepted forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROCESSORS)
def test_grayscale_forms_give_three_equal_channels(cls):
    gray = rgb()[:, :, 0]
    forms = [gray, gray[:, :, None], gray[None], PIL.Image.fromarray(gray), torch.from_numpy(gray)]
    outputs = [cls()(form, size=SMALL, return_tensors="pt")["pixel_values"] for form in forms]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=0, atol=0)
    processor = cls()
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    pixels = outputs[0][0] * std + mean
    torch.testing.assert_close(pixels[1], pixels[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(pixels[2], pixels[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_mixed_grayscale_and_rgb_batch(cls):
    """A batch mixing grayscale and RGB is fine: each image is processed as if it were alone."""
    gray, colour = rgb(20, 30)[:, :, 0], rgb(36, 24, seed=1)
    batch = cls()([gray, colour], size=SMALL, return_tensors="pt")
    alone = [cls()(image, size=SMALL, return_tensors="pt") for image in (gray, colour)]
    for index, single in enumerate(alone):
        height, width = single["pixel_values"].shape[-2:]
        torch.testing.assert_close(batch["pixel_values"][index, :, :height, :width], single["pixel_values"][0])
        assert batch["pixel_mask"][index].sum() == height * width


@pytest.mark.parametrize("cls", PROCESSORS)
def test_batch_forms_agree(cls):
    images = [rgb(seed=1), rgb(seed=2)]
    as_list = cls()(images, size=SMALL, return_tensors="pt")["pixel_values"]
    as_array = cls()(np.stack(images), size=SMALL, return_tensors="pt")["pixel_values"]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    as_tensor = cls()(batch, size=SMALL, return_tensors="pt")["pixel_values"]
    as_nested = cls()([[images[0]], [images[1]]], size=SMALL, return_tensors="pt")["pixel_values"]
    for other in (as_array, as_tensor, as_nested):
        torch.testing.assert_close(other, as_list, rtol=0, atol=0)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_flipped_and_read_only_arrays(cls):
    image = rgb(30, 45)
    flipped = image[::-1, ::-1]  # negative strides, no copy
    read_only = image.copy()
    read_only.flags.writeable = False
    expected = cls()(np.ascontiguousarray(flipped), size=SMALL, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(cls()(flipped, size=SMALL, return_tensors="pt")["pixel_values"], expected)
    expected = cls()(image, size=SMALL, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(cls()(read_only, size=SMALL, return_tensors="pt")["pixel_values"], expected)


def test_explicit_channel_format():
    """An ambiguous (3, H, 3) image is read channels-first unless told otherwise."""
    image = rgb(3, 40)  # shape (3, 40, 3)
    first = DeformableDetrImageProcessor()(image, do_resize=False, return_tensors="pt")["pixel_values"]
    last = DeformableDetrImageProcessor()(
        image, do_resize=False, input_data_format="channels_last", return_tensors="pt"
    )
    assert first.shape == (1, 3, 40, 3)
    assert last["pixel_values"].shape == (1, 3, 3, 40)


def test_slow_return_types_and_channels_last():
    image = rgb()
    out = DeformableDetrImageProcessor()([image, rgb(seed=3)], size=SMALL)
    assert isinstance(out["pixel_values"], list) and isinstance(out["pixel_values"][0], np.ndarray)
    out_np = DeformableDetrImageProcessor()([image], size=SMALL, return_tensors="np", data_format="channels_last")
    assert isinstance(out_np["pixel_values"], np.ndarray) and out_np["pixel_values"].shape[-1] == 3
    assert out_np.pixel_values is out_np["pixel_values"]  # attribute access


def test_batch_feature_to_moves_floats_only():
    annotation = {"image_id": 1, "annotations": [box([1, 2, 10, 8])]}
    out = DeformableDetrImageProcessorFast()(rgb(), annotations=annotation, size=SMALL)
    moved = out.to(torch.float64)
    assert moved["pixel_values"].dtype == torch.float64
    assert moved["pixel_mask"].dtype == torch.int64
    assert moved["labels"][0]["boxes"].dtype == torch.float64
    assert moved["labels"][0]["class_labels"].dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_on_gpu_matches_cpu():
    images = [rgb(seed=1), rgb(50, 20, seed=2)]
    annotations = [{"image_id": i, "annotations": [box([1, 2, 10, 8])]} for i in range(2)]
    cpu = DeformableDetrImageProcessorFast()(images, annotations, size=SMALL)
    gpu = DeformableDetrImageProcessorFast()(images, annotations, size=SMALL, device="cuda")
    assert gpu["pixel_values"].is_cuda and gpu["labels"][0]["boxes"].is_cuda
    torch.testing.assert_close(gpu["pixel_values"].cpu(), cpu["pixel_values"], rtol=0, atol=1e-4)
    torch.testing.assert_close(gpu["labels"][1]["boxes"].cpu(), cpu["labels"][1]["boxes"])


# ---- documented annotation handling -----------------------------------------------------------------


@pytest.mark.parametrize("cls", PROCESSORS)
def test_boxes_outside_image_are_clipped_or_dropped(cls):
    annotation = {
        "image_id": 5,
        "annotations": [
            box([-10, -10, 20, 20], 1),  # clipped to (0, 0, 10, 10)
            box([40, 25, 20, 20], 2),  # clipped to (40, 25, 45, 30)
            box([50, 5, 5, 5], 3),  # fully right of the image: dropped
            box([5, 5, 10, 0], 4),  # zero height: dropped
            box([5, 5, 10, 10], 5, iscrowd=1),  # crowd: dropped
        ],
    }
    out = cls()(rgb(30, 45), annotations=annotation, do_resize=False, do_convert_annotations=False, return_tensors="pt")
    labels = out["labels"][0]
    assert labels["class_labels"].tolist() == [1, 2]
    torch.testing.assert_close(labels["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 25.0, 45.0, 30.0]]))
    assert labels["iscrowd"].tolist() == [0, 0]
    assert labels["orig_size"].tolist() == [30, 45] and labels["size"].tolist() == [30, 45]


@pytest.mark.parametrize("cls", PROCESSORS)
def test_relative_boxes_account_for_padding(cls):
    """(cx, cy, w, h) relative to the padded canvas, from an independent computation."""
    annotations = [
        {"image_id": 1, "annotations": [box([4, 6, 10, 8])]},
        {"image_id": 2, "annotations": [box([0, 0, 20, 10])]},
    ]
    images = [rgb(30, 45), rgb(60, 40, seed=1)]
    out = cls()(images, annotations=annotations, size={"height": 30, "width": 45}, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 30, 45)
    # image 1 keeps its size; image 2 is resized by (30/60, 45/40)
    x, y, w, h = 4.0, 6.0, 10.0, 8.0
    expected = torch.tensor([[(x + w / 2) / 45, (y + h / 2) / 30, w / 45, h / 30]])
    torch.testing.assert_close(out["labels"][0]["boxes"], expected)
    expected2 = torch.tensor([[10 * 45 / 40 / 45, 5 * 0.5 / 30, 20 * 45 / 40 / 45, 10 * 0.5 / 30]])
    torch.testing.assert_close(out["labels"][1]["boxes"], expected2)
    padded = cls()(
        images, annotations=annotations, size={"height": 30, "width": 45}, pad_size={"height": 60, "width": 90},
        return_tensors="pt",
    )
    torch.testing.assert_close(padded["labels"][0]["boxes"], expected * torch.tensor([0.5, 0.5, 0.5, 0.5]))
    assert padded["pixel_mask"][0].sum() == 30 * 45 and padded["labels"][0]["size"].tolist() == [60, 90]


# ---- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", PROCESSORS)
@pytest.mark.parametrize(
    "images,message",
    [
        ([], "images is empty"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10, 0), dtype=np.uint8), "empty"),
        ([rgb(), np.zeros((10, 10, 4), dtype=np.uint8)], r"images\[1\].*4 channels"),
        ([rgb(), np.zeros((10, 10, 2), dtype=np.uint8)], r"images\[1\]"),
        (PIL.Image.new("RGBA", (10, 10)), r"images\[0\].*RGBA.*convert"),
        (PIL.Image.new("P", (10, 10)), r"images\[0\].*mode 'P'"),
        ("photo.jpg", "images must be"),
        ([rgb(), "photo.jpg"], r"images\[1\]"),
        (np.zeros((2, 2, 10, 10, 3), dtype=np.uint8), "images"),
        (np.zeros((10, 10, 3), dtype=bool), "dtype"),
    ],
)
def test_bad_images(cls, images, message):
    with pytest.raises(ValueError, match=message):
        cls()(images, size=SMALL)


def test_slow_refuses_float_images_out_of_range():
    with pytest.raises(ValueError, match=r"images\[0\].*\[0, 1\]"):
        DeformableDetrImageProcessor()(np.full((10, 10, 3), 1.5, dtype=np.float32), size=SMALL)


def test_slow_warns_on_images_already_in_unit_range():
    with pytest.warns(UserWarning, match="do_rescale=False"):
        DeformableDetrImageProcessor()(rgb().astype(np.float32) / 255, size=SMALL)


@pytest.mark.parametrize("cls", PROCESSORS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(format="pascal_voc"), ValueError, "format"),
        (dict(size={"shortest_edge": 10}), ValueError, "size"),
        (dict(size={"height": 0, "width": 10}), ValueError, "size"),
        (dict(size="big"), ValueError, "size"),
        (dict(pad_size={"height": 5, "width": 5}), ValueError, "pad_size"),
        (dict(pad_size={"h": 5}), ValueError, "pad_size"),
        (dict(image_std=[0.2, 0.0, 0.2]), ValueError, "image_std"),
        (dict(image_mean=[0.5, 0.5]), ValueError, "image_mean"),
        (dict(rescale_factor=-1.0), ValueError, "rescale_factor"),
        (dict(resample=9), ValueError, "resample"),
        (dict(return_tensors="tf"), ValueError, "return_tensors"),
        (dict(input_data_format="sideways"), ValueError, "input_data_format"),
    ],
)
def test_bad_options(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls()(rgb(), **kwargs)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_unknown_keyword_warns(cls):
    # issue 16: transformers warns about (and ignores) unknown keywords; so do we (no longer a TypeError)
    with pytest.warns(UserWarning, match="not_an_option"):
        cls()(rgb(), not_an_option=1)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_unpadded_different_sizes_cannot_be_stacked(cls):
    images = [rgb(30, 45), rgb(45, 30, seed=1)]
    with pytest.raises(ValueError, match="do_pad=True"):
        cls()(images, size=SMALL, do_pad=False, return_tensors="pt")
    out = cls()(images, size=SMALL, do_pad=False)
    assert [tuple(image.shape) for image in out["pixel_values"]] == [(3, 40, 60), (3, 60, 40)]


def test_fast_refuses_filters_torchvision_lacks():
    # LANCZOS is accepted since issue 16 (tests/test_hf_processor_surface.py); BOX and HAMMING are not
    with pytest.raises(ValueError, match="resample"):
        DeformableDetrImageProcessorFast()(rgb(), resample=PIL.Image.Resampling.BOX)
    with pytest.raises(ValueError, match="data_format"):
        DeformableDetrImageProcessorFast()(rgb(), data_format="channels_last")


def test_constructor_checks():
    with pytest.raises(ValueError, match="format"):
        DeformableDetrImageProcessor(format="yolo")
    # issue 16: transformers accepts any constructor keyword; we accept and warn, naming it
    with pytest.warns(UserWarning, match="colour"):
        DeformableDetrImageProcessorFast(colour=True)
    with pytest.warns(UserWarning, match="do_center_crop"):
        DeformableDetrImageProcessor(do_center_crop=True)


@pytest.mark.parametrize("cls", PROCESSORS)
@pytest.mark.parametrize(
    "annotations,kwargs,message",
    [
        ([{"image_id": 1, "annotations": []}] * 2, {}, "annotations has 2 entries but there are 1 images"),
        ({"annotations": []}, {}, r"annotations\[0\] must have the keys 'image_id' and 'annotations'"),
        (
            {"image_id": 1, "annotations": {"bbox": [1, 2, 3, 4]}},
            {},
            r"annotations\[0\]\['annotations'\] must be a list",
        ),
        ({"image_id": 1, "annotations": [[1, 2, 3, 4]]}, {}, r"annotations\[0\]\['annotations'\]\[0\] must be a dict"),
        ({"image_id": 1, "annotations": [{"category_id": 1, "area": 1.0}]}, {}, "has no 'bbox'"),
        ({"image_id": 1, "annotations": [{"bbox": [1, 2, 3], "category_id": 1, "area": 1.0}]}, {}, "4 numbers"),
        ({"image_id": 1, "annotations": [box([1, 2, 3, 4])]}, {"return_segmentation_masks": True}, "segmentation"),
        ("not annotations", {}, "annotations must be a dict or a list"),
        ({"image_id": 1, "annotations": []}, {"format": "coco_panoptic"}, "COCO panoptic"),
    ],
)
def test_bad_detection_annotations(cls, annotations, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls()(rgb(), annotations=annotations, **kwargs)


def _write_png(path, ids: np.ndarray) -> None:
    rgb_ids = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    PIL.Image.fromarray(rgb_ids).save(path)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_bad_panoptic_annotations(cls, tmp_path):
    ids = np.zeros((30, 45), dtype=np.int64)
    ids[5:10, 5:20] = 1000
    _write_png(tmp_path / "a.png", ids)
    segment = {"id": 1000, "category_id": 3, "iscrowd": 0, "area": 75.0}
    good = {"image_id": 1, "file_name": "a.png", "segments_info": [segment]}
    processor = cls(format="coco_panoptic")
    out = processor(
        rgb(), annotations=good, masks_path=tmp_path, do_resize=False, do_convert_annotations=False,
        return_tensors="pt",
    )
    torch.testing.assert_close(out["labels"][0]["boxes"], torch.tensor([[5.0, 5.0, 19.0, 9.0]]))
    assert out["labels"][0]["masks"].sum() == 75
    with pytest.raises(ValueError, match="masks_path"):
        processor(rgb(), annotations=good)
    with pytest.raises(ValueError, match="masks_path.*does not exist"):
        processor(rgb(), annotations={**good, "file_name": "missing.png"}, masks_path=tmp_path)
    with pytest.raises(ValueError, match=r"segment ids \[7\]"):
        processor(rgb(), annotations={**good, "segments_info": [segment, {**segment, "id": 7}]}, masks_path=tmp_path)
    with pytest.raises(ValueError, match="is 30x45 but its image is 31x45"):
        processor(rgb(31, 45), annotations=good, masks_path=tmp_path)
    with pytest.raises(ValueError, match=r"segments_info'\]\[0\] has no 'category_id'"):
        processor(rgb(), annotations={**good, "segments_info": [{"id": 1000}]}, masks_path=tmp_path)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match="aspect ratio"):
        output_size(1, 5000, {"shortest_edge": 800, "longest_edge": 1333})


# ---- deprecation, (de)serialisation, layering ---------------------------------------------------------


def test_feature_extractor_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match="DeformableDetrImageProcessor"):
        extractor = DeformableDetrFeatureExtractor(size=SMALL)
    images = [rgb(), rgb(40, 20, seed=1)]
    expected = DeformableDetrImageProcessor(size=SMALL)(images, return_tensors="pt")
    got = extractor(images, return_tensors="pt")
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    assert isinstance(extractor, DeformableDetrImageProcessor)


def test_deprecated_arguments_still_work():
    with pytest.warns(FutureWarning, match="max_size"):
        processor = DeformableDetrImageProcessor(size=600, max_size=1000)
    assert processor.size == {"shortest_edge": 600, "longest_edge": 1000}
    with pytest.warns(FutureWarning, match="do_pad"):
        out = DeformableDetrImageProcessorFast()(rgb(), size=SMALL, pad_and_return_pixel_mask=False)
    assert "pixel_mask" not in out


@pytest.mark.parametrize("cls", PROCESSORS)
def test_save_and_load_round_trip(cls, tmp_path):
    processor = cls(size={"max_height": 500, "max_width": 600}, image_mean=0.5, do_pad=False, resample=3)
    path = processor.save_pretrained(tmp_path / "proc")
    loaded = cls.from_pretrained(tmp_path / "proc")
    assert loaded.to_dict() == processor.to_dict()
    assert json.loads(open(path).read())["image_processor_type"] == cls.__name__
    assert cls.from_pretrained(path, do_pad=True).do_pad is True
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        cls.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("cls", PROCESSORS)
def test_loads_transformers_configs(cls, tmp_path):
    transformers = pytest.importorskip("transformers")
    for reference in (transformers.DeformableDetrImageProcessor, transformers.DeformableDetrImageProcessorFast):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference(size={"shortest_edge": 500, "longest_edge": 700}, do_normalize=False).save_pretrained(tmp_path)
        loaded = cls.from_pretrained(tmp_path)
        assert loaded.size == {"shortest_edge": 500, "longest_edge": 700}
        assert loaded.do_normalize is False and loaded.do_convert_annotations is False


def test_processors_do_not_import_the_op():
    code = (
        "import sys, models; models.DeformableDetrImageProcessorFast; models.DeformableDetrFeatureExtractor; "
        "import models.processing.image_processing; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('msda', 'detr_blocks', 'transformers')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("cls", PROCESSORS)
def test_loads_legacy_feature_extractor_config(cls, tmp_path):
    """The old ``max_size`` + int ``size`` form of early Deformable DETR configs."""
    legacy = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "DeformableDetrFeatureExtractor",
        "format": "coco_detection",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "max_size": 1000,
        "size": 600,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    with pytest.warns(FutureWarning, match="max_size"):
        processor = cls.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 600, "longest_edge": 1000}
    assert processor.do_pad and processor.do_rescale and processor.resample == 2
