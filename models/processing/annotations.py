"""COCO detection and panoptic annotations: checking, conversion to model targets, and their geometry.

A target (one per image) is a dict of arrays:

- ``image_id`` int64 ``[1]``; ``orig_size`` int64 ``[2]`` (height, width of the input image);
- ``class_labels`` int64 ``[N]``; ``boxes`` float32 ``[N, 4]``; ``area`` float32 ``[N]``; ``iscrowd`` int64 ``[N]``;
- optionally ``masks`` bool ``[N, H, W]`` and ``keypoints`` float32 ``[N*K, 3]``;
- ``size`` int64 ``[2]``: the size of the image as it enters the model (after resize, after padding).

``prepare_*`` build targets as numpy arrays with boxes as absolute ``(x0, y0, x1, y1)``. The geometry
functions (``resize_target``, ``normalize_target_boxes``, ``pad_target``) work on numpy arrays and on torch
tensors alike; resizing and padding masks is passed in, because the slow and fast processors do it with
different libraries.

Detection handling (as the reference processors): crowd objects (``iscrowd`` 1) are dropped, boxes are
clipped to the image, boxes with no area after clipping are removed. Panoptic handling: one mask per
segment from the PNG of RGB-encoded ids (id = R + 256 G + 256² B), boxes from the masks as
``(min x, min y, max x, max y)`` pixel indices, segmentation masks returned unless asked not to.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

Array = np.ndarray | torch.Tensor
Target = dict[str, Any]

SUPPORTED_FORMATS = ("coco_detection", "coco_panoptic")


def check_format(format: Any) -> str:
    """Return the annotation format name; raise naming ``format`` when it is not supported."""
    name = getattr(format, "value", format)
    if name not in SUPPORTED_FORMATS:
        raise ValueError(f"format must be one of {SUPPORTED_FORMATS}, got {format!r}")
    return name


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_annotations(
    annotations: Any, format: str, num_images: int, return_segmentation_masks: bool
) -> list[Mapping[str, Any]] | None:
    """Check the structure of COCO annotations (one dict per image) and return them as a list."""
    if annotations is None:
        return None
    if isinstance(annotations, Mapping):
        annotations = [annotations]
    if not isinstance(annotations, (list, tuple)):
        raise ValueError(f"annotations must be a dict or a list of dicts, got {type(annotations).__name__}")
    if len(annotations) != num_images:
        raise ValueError(f"annotations has {len(annotations)} entries but there are {num_images} images")
    for i, target in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(target, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(target).__name__}")
        if format == "coco_detection":
            _check_detection_target(target, where, return_segmentation_masks)
        else:
            _check_panoptic_target(target, where)
    return list(annotations)


def _check_detection_target(target: Mapping[str, Any], where: str, with_masks: bool) -> None:
    if "image_id" not in target or "annotations" not in target:
        raise ValueError(
            f"{where} must have the keys 'image_id' and 'annotations' (COCO detection), got {sorted(target)}"
        )
    objects = target["annotations"]
    if not isinstance(objects, (list, tuple)):
        raise ValueError(f"{where}['annotations'] must be a list of dicts, got {type(objects).__name__}")
    for j, obj in enumerate(objects):
        at = f"{where}['annotations'][{j}]"
        if not isinstance(obj, Mapping):
            raise ValueError(f"{at} must be a dict, got {type(obj).__name__}")
        for key in ("bbox", "category_id", "area"):
            if key not in obj:
                raise ValueError(f"{at} has no {key!r}")
        bbox = obj["bbox"]
        if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise ValueError(f"{at}['bbox'] must be 4 numbers [x, y, width, height], got {bbox!r}")
        if with_masks and obj.get("iscrowd", 0) == 0 and "segmentation" not in obj:
            raise ValueError(f"{at} has no 'segmentation' but segmentation masks were asked for")


def _check_panoptic_target(target: Mapping[str, Any], where: str) -> None:
    missing = [key for key in ("file_name", "segments_info") if key not in target]
    if missing or ("image_id" not in target and "id" not in target):
        raise ValueError(
            f"{where} must have the keys 'image_id', 'file_name' and 'segments_info' (COCO panoptic), "
            f"got {sorted(target)}"
        )
    segments = target["segments_info"]
    if not isinstance(segments, (list, tuple)):
        raise ValueError(f"{where}['segments_info'] must be a list of dicts, got {type(segments).__name__}")
    for j, segment in enumerate(segments):
        at = f"{where}['segments_info'][{j}]"
        if not isinstance(segment, Mapping):
            raise ValueError(f"{at} must be a dict, got {type(segment).__name__}")
        for key in ("id", "category_id", "iscrowd", "area"):
            if key not in segment:
                raise ValueError(f"{at} has no {key!r}")


def polygons_to_masks(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Rasterise COCO segmentations (polygon lists or RLE dicts) to bool masks ``[N, height, width]``."""
    from pycocotools import mask as coco_mask

    masks = np.zeros((len(segmentations), height, width), dtype=bool)
    for n, segmentation in enumerate(segmentations):
        with warnings.catch_warnings():
            # pycocotools' decode trips a numpy 2 "copy keyword" DeprecationWarning; the result is right.
            warnings.simplefilter("ignore", DeprecationWarning)
            if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), (str, bytes)):
                rle = dict(segmentation)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
                decoded = coco_mask.decode(rle)
            else:
                try:
                    rles = coco_mask.frPyObjects(segmentation, height, width)
                except Exception as error:
                    raise ValueError(
                        f"annotations: segmentation {str(segmentation)[:60]} is not a COCO polygon list or RLE: {error}"
                    ) from error
                decoded = coco_mask.decode(rles)
        if decoded.ndim == 3:
            decoded = decoded.any(axis=2)
        masks[n] = decoded.astype(bool)
    return masks


def prepare_coco_detection(
    target: Mapping[str, Any], image_size: tuple[int, int], return_masks: bool = False
) -> Target:
    """Turn one image's COCO detection annotations into a target with absolute ``(x0, y0, x1, y1)`` boxes."""
    height, width = image_size
    objects = [obj for obj in target["annotations"] if obj.get("iscrowd", 0) == 0]

    boxes = np.asarray([obj["bbox"] for obj in objects], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])

    new_target: Target = {
        "image_id": np.asarray([target["image_id"]], dtype=np.int64),
        "class_labels": np.asarray([obj["category_id"] for obj in objects], dtype=np.int64).reshape(-1)[keep],
        "boxes": boxes[keep],
        "area": np.asarray([obj["area"] for obj in objects], dtype=np.float32).reshape(-1)[keep],
        "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64),
        "orig_size": np.asarray([height, width], dtype=np.int64),
        "size": np.asarray([height, width], dtype=np.int64),
    }
    with_keypoints = [obj for obj in objects if "keypoints" in obj]
    if with_keypoints:
        if len(with_keypoints) != len(objects):
            raise ValueError("annotations: either every non-crowd object has 'keypoints' or none has")
        keypoints = np.asarray([obj["keypoints"] for obj in objects], dtype=np.float32)[keep]
        new_target["keypoints"] = keypoints.reshape(-1, 3) if len(keypoints) else keypoints
    if return_masks:
        masks = polygons_to_masks([obj["segmentation"] for obj in objects], height, width)
        new_target["masks"] = masks[keep]
    return new_target


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids ``[H, W]`` int64 of a panoptic PNG ``[H, W, 3]``: R + 256 G + 256² B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Boxes ``[N, 4]`` float32 ``(min x, min y, max x, max y)`` (pixel indices) around non-empty bool masks."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for n, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[n] = (cols[0], rows[0], cols[-1], rows[-1])
    return boxes


def read_panoptic_png(path: pathlib.Path, image_size: tuple[int, int]) -> np.ndarray:
    """Segment ids ``[H, W]`` of the panoptic PNG at ``path``; checks it matches the image size."""
    if not path.is_file():
        raise ValueError(f"masks_path: panoptic PNG {str(path)!r} does not exist")
    with PIL.Image.open(path) as png:
        rgb = np.asarray(png.convert("RGB"))
    if rgb.shape[:2] != tuple(image_size):
        raise ValueError(
            f"masks_path: panoptic PNG {str(path)!r} is {rgb.shape[0]}x{rgb.shape[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}"
        )
    return rgb_to_id(rgb)


def prepare_coco_panoptic(
    target: Mapping[str, Any],
    image_size: tuple[int, int],
    masks_path: str | pathlib.Path,
    return_masks: bool = True,
) -> Target:
    """Turn one image's COCO panoptic annotation (+ its PNG under ``masks_path``) into a target."""
    height, width = image_size
    path = pathlib.Path(masks_path) / target["file_name"]
    ids = read_panoptic_png(path, image_size)
    segments = target["segments_info"]
    segment_ids = np.asarray([segment["id"] for segment in segments], dtype=np.int64)
    masks = ids[None, :, :] == segment_ids[:, None, None]
    empty = ~masks.reshape(len(segments), -1).any(axis=1)
    if empty.any():
        missing = segment_ids[empty].tolist()
        raise ValueError(f"annotations: segment ids {missing} of {target['file_name']!r} do not occur in its PNG")
    new_target: Target = {
        "image_id": np.asarray([target["image_id"] if "image_id" in target else target["id"]], dtype=np.int64),
        "size": np.asarray([height, width], dtype=np.int64),
        "orig_size": np.asarray([height, width], dtype=np.int64),
        "boxes": masks_to_boxes(masks),
        "class_labels": np.asarray([segment["category_id"] for segment in segments], dtype=np.int64),
        "iscrowd": np.asarray([segment["iscrowd"] for segment in segments], dtype=np.int64),
        "area": np.asarray([segment["area"] for segment in segments], dtype=np.float32),
    }
    if return_masks:
        new_target["masks"] = masks
    return new_target


def prepare_target(
    target: Mapping[str, Any],
    format: str,
    image_size: tuple[int, int],
    return_segmentation_masks: bool | None,
    masks_path: str | pathlib.Path | None,
) -> Target:
    """Dispatch to the detection or panoptic preparation (masks default: off for detection, on for panoptic)."""
    if format == "coco_detection":
        return prepare_coco_detection(target, image_size, bool(return_segmentation_masks))
    if not isinstance(masks_path, (str, pathlib.Path)):
        raise ValueError(
            f"masks_path must be the directory (str or pathlib.Path) holding the panoptic PNGs, got {masks_path!r}"
        )
    return_masks = True if return_segmentation_masks is None else bool(return_segmentation_masks)
    return prepare_coco_panoptic(target, image_size, masks_path, return_masks)


def _vector(values: Sequence[float], like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.tensor(values, dtype=torch.float32, device=like.device)
    return np.asarray(values, dtype=np.float32)


def _size_array(size: tuple[int, int], like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.tensor(list(size), dtype=torch.int64, device=like.device)
    return np.asarray(size, dtype=np.int64)


def resize_target(
    target: Target,
    orig_size: tuple[int, int],
    new_size: tuple[int, int],
    resize_masks: Callable[[Array, tuple[int, int]], Array],
) -> Target:
    """Scale boxes and areas from ``orig_size`` to ``new_size``; ``resize_masks(masks, new_size)`` -> bool."""
    ratio_height = float(new_size[0]) / float(orig_size[0])
    ratio_width = float(new_size[1]) / float(orig_size[1])
    new_target = dict(target)
    new_target["size"] = _size_array(new_size, target["orig_size"])
    if "boxes" in target:
        boxes = target["boxes"]
        new_target["boxes"] = boxes * _vector([ratio_width, ratio_height, ratio_width, ratio_height], boxes)
    if "area" in target:
        new_target["area"] = target["area"] * (ratio_width * ratio_height)
    if "masks" in target:
        new_target["masks"] = resize_masks(target["masks"], new_size)
    return new_target


# The processors keep their own box conversions (numpy and torch) instead of ``detr_blocks.box_ops``:
# importing ``detr_blocks`` would load the op, and the processors must stay light.
def _stack(parts: list[Array], like: Array) -> Array:
    return torch.stack(parts, dim=-1) if isinstance(like, torch.Tensor) else np.stack(parts, axis=-1)


def corners_to_center(boxes: Array) -> Array:
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)`` for boxes ``[..., 4]`` (numpy or torch)."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], boxes)


def center_to_corners(boxes: Array) -> Array:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` for boxes ``[..., 4]`` (numpy or torch)."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], boxes)


def normalize_target_boxes(target: Target, image_size: tuple[int, int]) -> Target:
    """Boxes to ``(cx, cy, w, h)`` relative to ``image_size`` (height, width)."""
    if "boxes" not in target:
        return target
    height, width = image_size
    boxes = target["boxes"]
    new_target = dict(target)
    new_target["boxes"] = corners_to_center(boxes) / _vector([width, height, width, height], boxes)
    return new_target


def pad_target(
    target: Target,
    image_size: tuple[int, int],
    padded_size: tuple[int, int],
    update_boxes: bool,
    pad_masks: Callable[[Array, tuple[int, int]], Array],
) -> Target:
    """Account for bottom/right padding from ``image_size`` to ``padded_size``.

    Relative boxes (``update_boxes``) are rescaled to the padded canvas; absolute boxes do not move.
    """
    new_target = dict(target)
    new_target["size"] = _size_array(padded_size, target["orig_size"])
    if "masks" in target:
        new_target["masks"] = pad_masks(target["masks"], padded_size)
    if update_boxes and "boxes" in target:
        boxes = target["boxes"]
        ratio_height = image_size[0] / padded_size[0]
        ratio_width = image_size[1] / padded_size[1]
        new_target["boxes"] = boxes * _vector([ratio_width, ratio_height, ratio_width, ratio_height], boxes)
    return new_target


def target_to_torch(target: Target, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Numpy target -> torch tensors on ``device``."""
    return {key: torch.as_tensor(value).to(device) for key, value in target.items()}


def pad_annotation(
    annotation: Mapping[str, Any],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    update_bboxes: bool,
    pad_masks: Callable[[Array, tuple[int, int]], Array],
) -> dict[str, Any]:
    """A model-format annotation (``boxes``, ``masks``, ``size``, ...) after bottom/right padding.

    The ``pad`` methods' rule (as in ``transformers``): ``size`` becomes ``output_size`` (a tuple), masks are
    padded with zeros, relative boxes are rescaled to the padded canvas when ``update_bboxes``; other entries
    are kept. The input is not modified.
    """
    if not isinstance(annotation, Mapping):
        raise ValueError(f"annotations must hold dicts, got {type(annotation).__name__}")
    out: dict[str, Any] = {"size": tuple(output_size)}
    for key, value in annotation.items():
        if key == "masks":
            out[key] = pad_masks(value, tuple(output_size))
        elif key == "boxes" and update_bboxes:
            ratios = [
                input_size[1] / output_size[1],
                input_size[0] / output_size[0],
                input_size[1] / output_size[1],
                input_size[0] / output_size[0],
            ]
            if isinstance(value, torch.Tensor):
                out[key] = value * torch.as_tensor(ratios, device=value.device)
            else:
                value = np.asarray(value)
                out[key] = (value * np.asarray(ratios)).astype(value.dtype, copy=False)
        elif key != "size":
            out[key] = value
    return out
