"""Fine-tuning ``RTDetrForObjectDetection`` with ``transformers.Trainer`` (the recipe of docs/models.md,
with RT-DETR's processor: 64x64 squares, [0, 1] pixels, no ``pixel_mask``): Trainer saves with the
documented callback, resumes, evaluates; the checkpoint folder loads in our ``from_pretrained`` and in
``transformers``' with every weight, and all three give the trained model's outputs."""

from __future__ import annotations

import pytest
import torch

from models import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor
from tests.conftest import tiny_rt_detr_fields

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from tests.test_hf_trainer import SPEC, SyntheticDetection  # noqa: E402  (64x64 synthetic images, two classes)


def make_collate(processor):
    def collate(batch: list[dict]) -> dict:
        encoded = processor([item["image"] for item in batch], annotations=[item["target"] for item in batch], return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}

    return collate


@pytest.mark.parametrize("num_denoising", [0, 6], ids=["no_denoising", "denoising"])
def test_trainer_fine_tunes_rt_detr_and_the_checkpoint_loads_both_ways(tmp_path, num_denoising):
    from models.engine.hf_trainer import CheckpointConfigCallback

    config = RTDetrConfig(**tiny_rt_detr_fields(num_labels=len(SPEC.classes), num_denoising=num_denoising, id2label=dict(enumerate(SPEC.classes))))
    processor = RTDetrImageProcessor(size=64)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2,
        save_steps=1, learning_rate=1e-3, remove_unused_columns=False, report_to=[], use_cpu=True, logging_steps=1,
        dataloader_num_workers=0, eval_do_concat_batches=False, seed=0,
    )

    def trainer() -> transformers.Trainer:
        torch.manual_seed(0)
        return transformers.Trainer(model=RTDetrForObjectDetection(config), args=args, train_dataset=SyntheticDetection("train", 4),
                                    eval_dataset=SyntheticDetection("val", 2), data_collator=make_collate(processor),
                                    callbacks=[CheckpointConfigCallback()])

    first = trainer()
    before = {name: tensor.clone() for name, tensor in first.model.state_dict().items()}
    first.train()
    assert any(not torch.equal(before[name], tensor) for name, tensor in first.model.state_dict().items())  # it learned
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in first.state.log_history if "loss" in entry)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "config.json").is_file()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2
    assert torch.isfinite(torch.tensor(resumed.evaluate()["eval_loss"]))

    final = tmp_path / "run" / "checkpoint-2"
    ours = RTDetrForObjectDetection.from_pretrained(final).eval()
    theirs, info = transformers.RTDetrForObjectDetection.from_pretrained(final, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    trained = resumed.model.eval()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor.cpu(), msg=name)
    batch = make_collate(processor)([SyntheticDetection("val", 2)[i] for i in range(2)])
    with torch.no_grad():
        expected = trained(pixel_values=batch["pixel_values"])
        for loaded in (ours, theirs.eval()):
            got = loaded(pixel_values=batch["pixel_values"])
            torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, atol=1e-4, rtol=1e-4)
