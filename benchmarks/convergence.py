"""What the convergence benchmarks share: one budget on the demo's synthetic data, each detector
trained by this library's training loop, validated after every epoch and scored at the end on a
test split no run reads; the curves drawn and tabulated.

    data, recipe, test_set = prepare(out, epochs, steps)
    result = train_and_test(config, run_dir, data, recipe, test_set)   # a Result
    plot({"name": result.curve, ...}, png)

A run folder that already holds a finished run of the same config and recipe is scored, not trained
again, so a benchmark can be extended (another seed, another model) without redoing the rest.

Used by ``bench_dino_convergence.py`` and ``bench_hybrid_convergence.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from models.cli.demo import DEMO_SPEC, DEMO_TRAIN_ARGS
from models.data.coco import CocoDetection
from models.data.synthetic import write_synthetic_coco
from models.engine.evaluation import coco_metrics, predict_dataset
from models.engine.training import MODEL_DIR, TrainingArgs, train
from models.processing.image_processing import DeformableDetrImageProcessor
from models.registry import family_of

SPLITS = {"train": 2000, "val": 100, "test": 200}
"""Synthetic images per split (the demo's generator and seed): train on ``train``, validate on
``val`` after each epoch, score the final models on ``test``."""
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


LABEL_FIELDS = frozenset({"num_labels", "id2label", "label2id"})  # set by the training loop from the dataset


class Result(NamedTuple):
    """One trained detector: its per-epoch records (``metrics.jsonl``), its test metrics, and the
    minutes its training epochs took (validation excluded)."""

    curve: list[dict]
    test: dict[str, float]
    minutes: float


def prepare(out: Path, epochs: int, steps: int) -> tuple[Path, dict[str, Any], CocoDetection]:
    """Write the synthetic splits under ``out/data``; the demo recipe cut to ``epochs`` x ``steps``
    (learning rate dropped before the last epoch, validation after each); the test set."""
    written = write_synthetic_coco(out / "data", SPLITS, DEMO_SPEC, 0)
    recipe = {**DEMO_TRAIN_ARGS, "epochs": epochs, "lr_drop": max(1, epochs - 1), "max_steps_per_epoch": steps, "eval_every": 1}
    return out / "data", recipe, CocoDetection(*written["test"])


def curve(run_dir: Path) -> list[dict]:
    """The per-epoch records a training run wrote."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def finished(config: Any, run_dir: Path, recipe: Mapping[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished run of ``config`` (fields it saved) trained with ``recipe``."""
    try:
        saved_args = json.loads((run_dir / "train_args.json").read_text())["train_args"]
        saved_config = json.loads((run_dir / MODEL_DIR / "config.json").read_text())
        records = curve(run_dir)
    except (OSError, ValueError, KeyError):
        return False
    wanted = json.loads(json.dumps(config.to_dict()))
    same_config = all(saved_config[key] == value for key, value in wanted.items() if key in saved_config and key not in LABEL_FIELDS)
    same_recipe = all(saved_args.get(key) == value for key, value in json.loads(json.dumps(dict(recipe))).items())
    return same_config and same_recipe and bool(records) and records[-1]["epoch"] == recipe["epochs"]


def train_and_test(config: Any, run_dir: Path, data: Path, recipe: Mapping[str, Any], test_set: CocoDetection) -> Result:
    """Train ``config`` into ``run_dir`` with ``recipe`` (unless it is ``finished`` there), then
    score the saved model on ``test_set``."""
    if not finished(config, run_dir, recipe):
        train(TrainingArgs(data=str(data), out=str(run_dir), **recipe), config)
    records = curve(run_dir)
    model = family_of(config).detector_class.from_pretrained(run_dir / MODEL_DIR).eval()
    processor = DeformableDetrImageProcessor.from_pretrained(run_dir / MODEL_DIR)
    metrics, _ = coco_metrics(test_set.coco, predict_dataset(model, processor, test_set, batch_size=10))
    return Result(records, metrics, sum(record["train_time_s"] for record in records) / 60)


def final_loss(record: Mapping[str, float]) -> float:
    """The final decoder layer's one-to-one training loss with the matcher's weights (ce + 5 L1 + 2 GIoU)."""
    return record["train_loss_ce"] + record["train_loss_bbox"] * 5 + record["train_loss_giou"] * 2


def plot(curves: Mapping[str, list[dict]], path: Path) -> None:
    """Training loss and validation AP / AP50 per epoch, one colour per detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, records), colour in zip(curves.items(), COLOURS):
        epochs = [record["epoch"] for record in records]
        loss_axis.plot(epochs, [final_loss(record) for record in records], marker="o", color=colour, label=name)
        ap_axis.plot(epochs, [record.get("AP50", float("nan")) for record in records], marker="o", color=colour, label=f"{name} AP50")
        ap_axis.plot(epochs, [record.get("AP", float("nan")) for record in records], marker="s", linestyle="--", color=colour, label=f"{name} AP")
    loss_axis.set(title="final-layer training loss (ce + 5 L1 + 2 GIoU)", xlabel="epoch", ylabel="loss")
    ap_axis.set(title="held-out COCO AP (val split)", xlabel="epoch", ylabel="AP", ylim=(0, 1))
    for axis in (loss_axis, ap_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def final_table(results: Mapping[str, Result]) -> str:
    """Markdown rows: test AP, AP50, AP75 and training minutes per detector."""
    header = "| model | AP | AP50 | AP75 | training minutes |\n|---|---|---|---|---|\n"
    return header + "\n".join(
        f"| {name} | {r.test['AP']:.3f} | {r.test['AP50']:.3f} | {r.test['AP75']:.3f} | {r.minutes:.1f} |" for name, r in results.items()
    )


def epoch_table(curves: Mapping[str, list[dict]]) -> str:
    """Markdown rows: validation AP50 / AP after each epoch, one column per detector."""
    names = list(curves)
    header = f"| epoch | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n"
    return header + "\n".join(
        f"| {epoch + 1} | " + " | ".join(f"{curves[name][epoch].get('AP50', float('nan')):.3f} / {curves[name][epoch].get('AP', float('nan')):.3f}" for name in names) + " |"
        for epoch in range(min(len(records) for records in curves.values()))
    )
