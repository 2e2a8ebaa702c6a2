"""Does class-aware NMS help the embedded demo? Held-out AP and near-duplicate boxes, with and without.

Runs the shipped demo detector once over the demo's held-out ``test`` split (the same images
``deformable-detr demo`` generates: ``DEMO_SPEC``, ``DEMO_DATA_SEED``, ``DEMO_TEST_IMAGES``), then
post-processes the same outputs with ``nms_threshold`` off and at a few IoU thresholds:

- COCO metrics as the demo computes them (score threshold 0, top-k 100 → all 60 query×class pairs of the
  20-query, 3-class detector; ``coco_metrics``);
- at the drawing threshold of the README and of ``demo --threshold`` (0.3): the boxes drawn, and the
  near-duplicates among them: a drawn box is a near-duplicate when a better-scored drawn box of the same
  class in the same image overlaps it with IoU > 0.7.

    python -m benchmarks.bench_demo_nms [--thresholds 0.5,0.6,0.7,0.8,0.9] [--test-images 100] [--device cpu]

Prints a Markdown table (copied into ``docs/image_processors.md``).
"""

from __future__ import annotations

import argparse
import tempfile
from types import SimpleNamespace

import torch
from torchvision.ops import box_iou

from models.cli.demo import DEMO_DATA_SEED, DEMO_SPEC, DEMO_TEST_IMAGES, DEMO_TEST_SPLIT
from models.cli.loading import load_detector
from models.data.coco import CocoDetection, detections_to_coco
from models.data.synthetic import write_synthetic_coco
from models.engine.evaluation import coco_metrics

DRAW_THRESHOLD = 0.3
DUPLICATE_IOU = 0.7


@torch.no_grad()
def model_outputs(model: torch.nn.Module, processor, dataset: CocoDetection, device: str, batch_size: int = 10) -> list[tuple]:
    """``(image_ids, outputs, sizes)`` per batch: ``outputs.logits`` ``[B, Q, C]`` and ``pred_boxes`` ``[B, Q, 4]``
    in float32 on the CPU, ``sizes`` ``[B, 2]`` (height, width); the same calls as ``predict_images``."""
    model.eval()
    batches = []
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        images = [dataset.load_image(i) for i in indices]
        inputs = processor(images=images, return_tensors="pt")
        out = model(pixel_values=inputs["pixel_values"].to(device), pixel_mask=inputs["pixel_mask"].to(device))
        outputs = SimpleNamespace(logits=out.logits.float().cpu(), pred_boxes=out.pred_boxes.float().cpu())
        sizes = torch.tensor([[image.size[1], image.size[0]] for image in images], dtype=torch.int64)
        batches.append(([dataset.images[i]["id"] for i in indices], outputs, sizes))
    return batches


def near_duplicates(result: dict[str, torch.Tensor], iou: float = DUPLICATE_IOU) -> int:
    """Boxes of ``result`` (sorted by decreasing score) overlapped with IoU > ``iou`` by a better-scored
    box of the same label."""
    boxes, labels = result["boxes"], result["labels"]
    overlaps = box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    better = torch.ones_like(same).triu(diagonal=1)  # [i, j]: i is before j, so scored at least as high
    return int(((overlaps > iou) & same & better).any(dim=0).sum())


def evaluate(processor, dataset: CocoDetection, batches: list[tuple], nms_threshold: float | None) -> dict[str, float]:
    records, drawn, duplicates = [], 0, 0
    for image_ids, outputs, sizes in batches:
        top_k = outputs.logits.shape[1] * outputs.logits.shape[2]
        results = processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=sizes, top_k=min(100, top_k), nms_threshold=nms_threshold
        )
        records.extend(detections_to_coco(dataset, image_ids, results))
        shown = processor.post_process_object_detection(
            outputs, threshold=DRAW_THRESHOLD, target_sizes=sizes, top_k=100, nms_threshold=nms_threshold
        )
        drawn += sum(len(r["scores"]) for r in shown)
        duplicates += sum(near_duplicates(r) for r in shown)
    metrics, _ = coco_metrics(dataset.coco, records)
    return {**metrics, "records": len(records), "drawn": drawn, "duplicates": duplicates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9", help="NMS IoU thresholds, comma-separated")
    parser.add_argument("--test-images", type=int, default=DEMO_TEST_IMAGES)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    thresholds = [float(value) for value in args.thresholds.split(",")]

    model, processor = load_detector("demo", None, args.device)
    with tempfile.TemporaryDirectory() as folder:
        written = write_synthetic_coco(folder, {DEMO_TEST_SPLIT: args.test_images}, DEMO_SPEC, DEMO_DATA_SEED)
        dataset = CocoDetection(*written[DEMO_TEST_SPLIT])
        batches = model_outputs(model, processor, dataset, args.device)
        rows = [(None, evaluate(processor, dataset, batches, None))]
        rows += [(value, evaluate(processor, dataset, batches, value)) for value in thresholds]
        objects = dataset.num_usable_boxes

    print(f"demo detector, {args.test_images} held-out images ({objects} objects); boxes drawn at score > {DRAW_THRESHOLD}; "
          f"a near-duplicate is a drawn box overlapped (IoU > {DUPLICATE_IOU}) by a better-scored one of its class\n")
    print("| nms_threshold | AP | AP50 | AP75 | AR100 | detections scored | boxes drawn | near-duplicates drawn |")
    print("|---|---|---|---|---|---|---|---|")
    for value, row in rows:
        name = "off" if value is None else f"{value:g}"
        print(f"| {name} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AP75']:.3f} | {row['AR100']:.3f} | "
              f"{row['records']} | {row['drawn']} | {row['duplicates']} |")


if __name__ == "__main__":
    main()
