"""Loader for COCO-format detection datasets (a folder of images plus an annotations JSON).

The loader checks the annotations when it is built and the image files when they are read, and every
error names the file and the problem. COCO category ids need not be contiguous: they are mapped to
labels ``0..K-1`` in increasing id order (:attr:`CocoDetection.category_ids`), and
:meth:`CocoDetection.label_to_category_id` maps predictions back.

Each item is ``(image, target)``: an RGB ``PIL.Image`` and a dict with

- ``boxes``: float32 ``[N, 4]`` (x0, y0, x1, y1) in pixels of the image as stored,
- ``class_labels``: int64 ``[N]`` contiguous labels,
- ``image_id``: int, ``orig_size``: int64 ``[2]`` (height, width),
- ``area``: float32 ``[N]``, ``iscrowd``: int64 ``[N]``.

Boxes of zero width or height are dropped (they cannot be matched); crowd boxes are kept in the target
with ``iscrowd=1`` only when ``keep_crowd=True`` (training skips them, like the reference recipe).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from models.data.image_files import ImageError, read_image

BOX_TOLERANCE = 1.0
"""Pixels a box may extend past the image border (rounding in real datasets) before it is an error."""


def resolve_split(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Find the images folder and annotations file of ``split`` under ``data_dir``.

    Looks for, in order: ``images/{split}/`` + ``annotations/{split}.json`` (the synthetic layout),
    and ``{split}2017/`` + ``annotations/instances_{split}2017.json`` (the COCO 2017 layout).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {str(root)!r} does not exist or is not a directory")
    candidates = [
        (root / "images" / split, root / "annotations" / f"{split}.json"),
        (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),
        (root / split, root / "annotations" / f"instances_{split}.json"),
    ]
    for images_dir, ann_file in candidates:
        if images_dir.is_dir() and ann_file.is_file():
            return images_dir, ann_file
    tried = "; ".join(f"{i} + {a}" for i, a in candidates)
    raise FileNotFoundError(f"no {split!r} split found in {str(root)!r}; looked for: {tried}")


def load_coco_json(path: str | Path) -> dict:
    """Read and structurally check a COCO annotations file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"annotations file {str(path)!r} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"annotations file {str(path)!r} is not UTF-8 text: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"annotations file {str(path)!r}: expected a JSON object at the top, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"annotations file {str(path)!r}: missing or non-list key {key!r}")
    return data


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_coco(data: dict, source: str) -> tuple[dict, list[str]]:
    """Check a COCO annotations dict for everything that would crash or corrupt training or metrics.

    This is the one validator of ground truth: the dataset (train and eval) and
    :func:`models.engine.evaluation.coco_metrics` both call it.

    Refused (``ValueError`` naming ``source``, the annotation and the field): missing or non-integer
    ids, repeated image/annotation/category ids (pycocotools indexes by id, so a repeat silently
    corrupts the metrics), an annotation naming an unknown image or category, a ``bbox`` that is not
    four finite numbers, a negative size, a box more than :data:`BOX_TOLERANCE` pixels outside its
    image, an ``area`` that is not a finite number >= 0, an ``iscrowd`` other than 0/1.

    Skipped (named in the returned notes, which callers show as warnings): boxes of zero width or
    height, which can be neither learned nor matched; they are removed from the returned dict.

    Returns:
        (clean copy of ``data``, notes).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object at the top, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{source}: missing or non-list key {key!r}")

    category_ids: set[int] = set()
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise ValueError(f"{source}: every category needs an integer 'id', got {cat!r} (category #{k})")
        if cat["id"] in category_ids:
            raise ValueError(f"{source}: category ids repeat: {sorted(c.get('id') for c in data['categories'])}")
        category_ids.add(cat["id"])
    if not category_ids:
        raise ValueError(f"{source}: no categories")

    images: dict[int, dict] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{source}: every image needs an integer 'id' and a 'file_name', got {img!r} (image #{k})")
        if img["id"] in images:
            raise ValueError(f"{source}: image id {img['id']} appears twice")
        for field in ("width", "height"):
            if field in img and not (_is_int(img[field]) and img[field] > 0):
                raise ValueError(f"{source}: image {img['id']} ({img['file_name']!r}) field {field!r} must be a positive integer, got {img[field]!r}")
        images[img["id"]] = img

    kept: list[dict] = []
    seen: dict[int, int] = {}
    zero_size: list[int] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{source}: annotation #{k} is not an object: {ann!r}")
        ann_id = ann.get("id")
        if not _is_int(ann_id):
            raise ValueError(f"{source}: annotation #{k} (0-based position) needs an integer field 'id', got {ann_id!r}")
        where = f"{source}: annotation {ann_id}"
        if ann_id in seen:
            raise ValueError(
                f"{where} appears twice (annotations #{seen[ann_id]} and #{k}); pycocotools indexes annotations by id, "
                "so repeated ids corrupt the metrics: give every annotation its own 'id'"
            )
        seen[ann_id] = k
        image_id = ann.get("image_id")
        if not _is_int(image_id) or image_id not in images:
            raise ValueError(f"{where} references image id {image_id!r}, which is not in 'images'")
        category_id = ann.get("category_id")
        if not _is_int(category_id) or category_id not in category_ids:
            raise ValueError(f"{where} has category_id {category_id!r}, which is not in 'categories' {sorted(category_ids)}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"{where} needs 'bbox' as 4 finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise ValueError(f"{where} has a negative box size {bbox}")
        img = images[image_id]
        width, height = img.get("width"), img.get("height")
        if width is not None and height is not None:
            if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
                raise ValueError(f"{where} box {bbox} lies outside image {img['file_name']!r} of size {width}x{height}")
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise ValueError(f"{where} field 'area' must be a finite number >= 0, got {ann['area']!r}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            raise ValueError(f"{where} field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        if w == 0 or h == 0:
            zero_size.append(ann_id)
            continue
        kept.append(ann)

    notes = []
    if zero_size:
        shown = ", ".join(map(str, zero_size[:10])) + (f", ... ({len(zero_size)} in all)" if len(zero_size) > 10 else "")
        notes.append(f"{source}: skipped {len(zero_size)} annotation(s) with a zero-width or zero-height box (ids {shown}); "
                     "they are neither trained on nor counted by the metrics")
    clean = dict(data)
    clean["annotations"] = kept
    return clean, notes


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset.

    Args:
        images_dir: folder holding the files named by ``images[*].file_name``.
        annotations_file: the COCO annotations JSON.
        transforms: optional callable ``(image, target) -> (image, target)`` applied to each item.
        keep_crowd: keep ``iscrowd=1`` boxes in targets (default False: dropped, as in training).
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations_file: str | Path,
        transforms: Callable | None = None,
        keep_crowd: bool = False,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotations_file = Path(annotations_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder {str(self.images_dir)!r} does not exist")
        self.transforms = transforms
        self.keep_crowd = keep_crowd
        where = f"annotations file {str(self.annotations_file)!r}"
        self.coco, notes = validate_coco(load_coco_json(self.annotations_file), where)
        for note in notes:
            warnings.warn(note, stacklevel=2)

        categories = self.coco["categories"]
        self.category_ids: list[int] = sorted(cat["id"] for cat in categories)
        self._label_of_category = {cid: label for label, cid in enumerate(self.category_ids)}
        names = {cat["id"]: str(cat.get("name", cat["id"])) for cat in categories}
        self.class_names: list[str] = [names[cid] for cid in self.category_ids]

        self.images: list[dict] = list(self.coco["images"])
        self._annotations: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        for ann in self.coco["annotations"]:
            self._annotations[ann["image_id"]].append(ann)

    @property
    def num_usable_boxes(self) -> int:
        """Annotations that can be trained on and matched: not crowd (zero-size ones are already gone)."""
        return sum(1 for anns in self._annotations.values() for ann in anns if not ann.get("iscrowd", 0))

    def usability_problem(self) -> str | None:
        """Why this split cannot teach or measure anything (no images; no box that is not a crowd box), or None."""
        if not self.images:
            return f"{str(self.annotations_file)!r} lists no images"
        if self.num_usable_boxes == 0:
            crowd = sum(len(a) for a in self._annotations.values())
            kind = f"all {crowd} annotations are crowd boxes (iscrowd=1)" if crowd else "there are no annotations"
            return f"{str(self.annotations_file)!r} has {len(self.images)} images but {kind}: nothing to learn or to match"
        return None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_to_category_id(self, label: int) -> int:
        """The COCO category id of contiguous label ``label``."""
        if not 0 <= int(label) < len(self.category_ids):
            raise ValueError(f"label must be in [0, {len(self.category_ids)}), got {label}")
        return self.category_ids[int(label)]

    def category_id_to_label(self, category_id: int) -> int:
        if category_id not in self._label_of_category:
            raise ValueError(f"category_id {category_id} is not one of {self.category_ids}")
        return self._label_of_category[category_id]

    @property
    def id2label(self) -> dict[int, str]:
        return {i: name for i, name in enumerate(self.class_names)}

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.images[index]["file_name"]

    def load_image(self, index: int) -> Image.Image:
        """Open image ``index`` as RGB (:func:`models.data.image_files.read_image`: EXIF orientation, 16-bit and
        float images); a missing, unreadable or mis-sized file raises naming the file."""
        info = self.images[index]
        path = self.image_path(index)
        image = read_image(path)
        width, height = info.get("width"), info.get("height")
        if isinstance(width, int) and isinstance(height, int) and image.size != (width, height):
            raise ImageError(
                f"image file {str(path)!r} (upright, after its EXIF orientation) is {image.size[0]}x{image.size[1]} but "
                f"{str(self.annotations_file)!r} says {width}x{height}"
            )
        return image

    def target(self, index: int, size: tuple[int, int] | None = None) -> dict:
        """The target dict of image ``index`` (see the module docstring); ``size`` = (width, height) for clipping."""
        info = self.images[index]
        if size is None:
            size = (int(info["width"]), int(info["height"]))
        width, height = size
        boxes, labels, areas, crowd = [], [], [], []
        for ann in self._annotations[info["id"]]:
            is_crowd = int(ann.get("iscrowd", 0))
            if is_crowd and not self.keep_crowd:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self._label_of_category[ann["category_id"]])
            areas.append(float(ann.get("area", w * h)))
            crowd.append(is_crowd)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "class_labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(info["id"]),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        }

    def __getitem__(self, index: int):
        if not 0 <= index < len(self.images):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.images)} images")
        image = self.load_image(index)
        target = self.target(index, image.size)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def detections_to_coco(
    dataset: CocoDetection, image_ids: Sequence[int], results: Sequence[dict[str, torch.Tensor]]
) -> list[dict]:
    """Turn post-processed detections into COCO result records.

    Args:
        dataset: gives the mapping from contiguous labels back to COCO category ids.
        image_ids: COCO image id of each result.
        results: per image ``{"scores": [K], "labels": [K], "boxes": [K, 4]}`` with boxes
            (x0, y0, x1, y1) in pixels of the original image.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.
    """
    if len(image_ids) != len(results):
        raise ValueError(f"image_ids ({len(image_ids)}) and results ({len(results)}) must have the same length")
    records = []
    for image_id, res in zip(image_ids, results):
        boxes = res["boxes"].detach().float().cpu().tolist()
        for score, label, (x0, y0, x1, y1) in zip(res["scores"].tolist(), res["labels"].tolist(), boxes):
            records.append(
                {
                    "image_id": int(image_id),
                    "category_id": dataset.label_to_category_id(int(label)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    return records
