"""COCO box metrics with ``pycocotools``, and running a detector over a COCO-format dataset.

:func:`coco_metrics` is a thin, quiet wrapper over ``COCOeval`` that returns the twelve summary numbers
under stable names; ``metrics.json`` carries them (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``
and the recalls ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``). Values are fractions in
[0, 1] as pycocotools reports them (``-1`` where a size range has no ground truth).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from models.data.coco import detections_to_coco, load_coco_json, validate_coco
from models.data.image_files import ImageError
from models.processing.postprocess import post_process_object_detection

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of ``COCOeval.stats[0..11]`` in order."""


def _coco_from_dict(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_detections(detections: Sequence[dict], image_ids: Iterable[int], category_ids: Iterable[int], source: str = "detections") -> None:
    """Raise ``ValueError`` naming ``source`` when a record is malformed or names an unknown image or category."""
    images, categories = set(image_ids), set(category_ids)
    if not isinstance(detections, (list, tuple)):
        raise ValueError(f"{source}: expected a list of detection records, got {type(detections).__name__}")
    for k, det in enumerate(detections):
        if not isinstance(det, dict):
            raise ValueError(f"{source}: record {k} is not an object: {det!r}")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise ValueError(f"{source}: record {k} lacks {key!r}: {det!r}")
        bbox = det["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
            raise ValueError(f"{source}: record {k} needs 'bbox' as [x, y, w, h] of finite numbers, got {bbox!r}")
        if not _finite_number(det["score"]):
            raise ValueError(f"{source}: record {k} needs 'score' as a finite number, got {det['score']!r}")
        if det["image_id"] not in images:
            raise ValueError(f"{source}: record {k} names image_id {det['image_id']!r}, which is not in the ground truth")
        if det["category_id"] not in categories:
            raise ValueError(f"{source}: record {k} names category_id {det['category_id']!r}, which is not in the ground truth")


def coco_metrics(ground_truth: dict | str | os.PathLike, detections: Sequence[dict]) -> tuple[dict[str, float], str]:
    """Evaluate box detections against COCO ground truth with ``pycocotools``.

    Args:
        ground_truth: a COCO annotations dict, or the path of its JSON file.
        detections: COCO result records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

    Returns:
        (metrics, summary): ``{name: value}`` for :data:`METRIC_NAMES`, and the text table that
        ``COCOeval.summarize`` prints.
    """
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, dict):
        source = "ground truth"
    else:
        source = f"annotations file {str(ground_truth)!r}"
        ground_truth = load_coco_json(ground_truth)
    ground_truth, notes = validate_coco(ground_truth, source)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    if not ground_truth["images"]:
        raise ValueError(f"{source} has no images: there is nothing to evaluate (an AP would be meaningless)")
    if not any(not ann.get("iscrowd", 0) for ann in ground_truth["annotations"]):
        warnings.warn(
            f"{source} has {len(ground_truth['images'])} images but no box that is not a crowd box: every AP and AR is -1",
            stacklevel=2,
        )
    # pycocotools needs these keys even for box-only evaluation
    gt = dict(ground_truth)
    gt["annotations"] = [
        {**ann, "area": ann.get("area", ann["bbox"][2] * ann["bbox"][3]), "iscrowd": ann.get("iscrowd", 0)}
        for ann in ground_truth["annotations"]
    ]
    coco_gt = _coco_from_dict(gt)
    check_detections(detections, coco_gt.getImgIds(), coco_gt.getCatIds())
    if len(detections) == 0:
        metrics = {name: 0.0 for name in METRIC_NAMES}
        return metrics, "no detections: every metric is 0\n"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}
    return metrics, summary.getvalue()


def write_metrics(path: str | os.PathLike, metrics: dict, extra: dict | None = None) -> None:
    """Write ``metrics`` (plus ``extra`` keys) as JSON to ``path`` atomically."""
    data = dict(metrics)
    if extra:
        data.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _name_unusable_image(processor, images: Sequence, err: ValueError) -> None:
    """Raise ``ImageError`` naming the image (its file when known) that ``processor`` cannot take."""
    for k, image in enumerate(images):
        try:
            processor(images=[image], return_tensors="pt")
        except ValueError as single:
            name = image.info.get("path") if hasattr(image, "info") else None
            label = f"image {name!r}" if name else f"image #{k} of the batch"
            size = f" ({image.size[0]}x{image.size[1]})" if hasattr(image, "size") else ""
            raise ImageError(f"{label}{size} cannot be processed: {single}") from err


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    processor,
    images: Sequence,
    threshold: float = 0.0,
    top_k: int = 100,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    nms_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Run ``model`` on a batch of PIL images, returning per image ``{"scores", "labels", "boxes"}``.

    The processor prepares the images as its family's model reads them
    (``processor(images=..., return_tensors="pt")``: resized, rescaled, normalized and padded with a
    ``pixel_mask`` as its options say). The outputs become detections in pixels of each original
    image by ``models.processing.postprocess.post_process_object_detection``, which every processor's
    post-processing calls (so one ``top_k`` and NMS serve every family): the ``top_k`` best (query,
    class) pairs (softmax per query instead when the model's config sets ``use_focal_loss=False``),
    boxes (x0, y0, x1, y1); ``nms_threshold`` (an IoU in (0, 1], default None: off) applies class-aware
    NMS after the top-k.
    """
    if len(images) == 0:
        return []
    try:
        inputs = processor(images=list(images), return_tensors="pt")
    except ValueError as err:
        _name_unusable_image(processor, images, err)
        raise
    device = torch.device(device)
    pixel_values = inputs["pixel_values"].to(device)
    pixel_mask = inputs["pixel_mask"].to(device) if "pixel_mask" in inputs else None
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    # post-processing only reads logits and pred_boxes; hand it float32 copies
    outputs = SimpleNamespace(logits=outputs.logits.float(), pred_boxes=outputs.pred_boxes.float())
    sizes = torch.tensor([[im.size[1], im.size[0]] for im in images], dtype=torch.int64)
    k = min(top_k, outputs.logits.shape[1] * outputs.logits.shape[2])
    focal = getattr(getattr(model, "config", None), "use_focal_loss", True)
    results = post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes, top_k=k, nms_threshold=nms_threshold,
                                            use_focal_loss=focal)
    return [{key: value.detach().cpu() for key, value in res.items()} for res in results]


def predict_dataset(
    model: torch.nn.Module,
    processor,
    dataset,
    indices: Sequence[int] | None = None,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    nms_threshold: float | None = None,
) -> list[dict]:
    """Detections of ``model`` on ``dataset`` (a :class:`models.data.coco.CocoDetection`) as COCO records.

    ``indices`` restricts it to some images (each process of a distributed run takes its share);
    ``nms_threshold`` is passed to :func:`predict_images` (default None: no NMS).
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = list(range(len(dataset))) if indices is None else list(indices)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if progress is not None:
        batches = progress(batches)
    was_training = model.training
    model.eval()
    records: list[dict] = []
    try:
        for batch in batches:
            images = [dataset.load_image(i) for i in batch]
            results = predict_images(model, processor, images, threshold=0.0, top_k=100, device=device,
                                     autocast_dtype=autocast_dtype, nms_threshold=nms_threshold)
            image_ids = [dataset.images[i]["id"] for i in batch]
            records.extend(detections_to_coco(dataset, image_ids, results))
    finally:
        model.train(was_training)
    return records
