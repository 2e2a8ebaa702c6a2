"""Issue 16, item 7: fine-tuning with ``transformers.Trainer`` (the recipe in docs/models.md).

A tiny detector, synthetic images, a collate function over our image processor; Trainer saves a
checkpoint with safetensors (its default), resumes from it, evaluates; the checkpoint loads back
with our ``from_pretrained`` and with ``transformers``', and both give the same outputs.
"""

from __future__ import annotations

import os

import pytest
import torch

from models import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrImageProcessor
from models.data.synthetic import SyntheticSpec, generate_image

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

TINY = dict(
    backbone="resnet18", use_pretrained_backbone=False, backbone_kwargs={"out_indices": [2, 3], "in_chans": 3},
    num_feature_levels=2, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8, encoder_n_points=2, decoder_n_points=2, dropout=0.0,
    auxiliary_loss=True, with_box_refine=True, two_stage=True, two_stage_num_proposals=8,  # heads shared with the decoder
)
SPEC = SyntheticSpec(image_size=(64, 64), classes=("circle", "square"))


class SyntheticDetection(torch.utils.data.Dataset):
    """(PIL image, COCO annotation) pairs, as ``datasets`` would hand them to a collate function."""

    def __init__(self, split: str, size: int) -> None:
        self.split, self.size = split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        image, objects = generate_image(SPEC, 0, self.split, index)
        annotations = [{"bbox": list(obj.box), "category_id": obj.label, "area": obj.box[2] * obj.box[3], "iscrowd": 0} for obj in objects]
        return {"image": image, "target": {"image_id": index, "annotations": annotations}}


def make_collate(processor):
    def collate(batch: list[dict]) -> dict:
        encoded = processor([item["image"] for item in batch], annotations=[item["target"] for item in batch], return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"], "labels": encoded["labels"]}

    return collate


def test_trainer_saves_resumes_evaluates_and_loads_both_ways(tmp_path):
    torch.manual_seed(0)
    id2label = dict(enumerate(SPEC.classes))
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(**TINY, id2label=id2label))
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2,
        save_steps=1, learning_rate=1e-4, remove_unused_columns=False, report_to=[], use_cpu=True, logging_steps=1,
        dataloader_num_workers=0, eval_do_concat_batches=False, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=SyntheticDetection("train", 2),
                                   eval_dataset=SyntheticDetection("val", 2), data_collator=make_collate(processor))
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file()  # safetensors, the default: shared heads written once
    # resume from the first checkpoint and finish
    resumed = transformers.Trainer(model=DeformableDetrForObjectDetection(DeformableDetrConfig(**TINY, id2label=id2label)), args=args,
                                   train_dataset=SyntheticDetection("train", 2), eval_dataset=SyntheticDetection("val", 2),
                                   data_collator=make_collate(processor))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2
    metrics = resumed.evaluate()
    assert "eval_loss" in metrics and torch.isfinite(torch.tensor(metrics["eval_loss"]))

    final = tmp_path / "run" / "checkpoint-2"
    model.config.save_pretrained(final)  # Trainer writes only the weights of a model that is not a PreTrainedModel
    ours = DeformableDetrForObjectDetection.from_pretrained(final)
    theirs = transformers.DeformableDetrForObjectDetection.from_pretrained(final)
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor.cpu(), msg=name)
    batch = make_collate(processor)([SyntheticDetection("val", 2)[i] for i in range(2)])
    with torch.no_grad():
        a = ours(batch["pixel_values"], batch["pixel_mask"])
        b = theirs(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=1e-4, rtol=1e-4)
    assert os.path.isfile(final / "config.json")


def test_trainer_fine_tunes_dino_and_the_checkpoint_loads_back(tmp_path):
    from models import DinoConfig, DinoForObjectDetection

    config = DinoConfig(backbone="resnet18", backbone_out_indices=[2, 3], num_feature_levels=2, d_model=32, encoder_layers=1, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8,
                        encoder_n_points=2, decoder_n_points=2, dn_number=4, two_stage_class_embed_share=True,
                        two_stage_bbox_embed_share=True, id2label=dict(enumerate(SPEC.classes)))
    torch.manual_seed(0)
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2,
        save_steps=1, learning_rate=1e-4, remove_unused_columns=False, report_to=[], use_cpu=True, logging_steps=1,
        dataloader_num_workers=0, eval_do_concat_batches=False, seed=0,
    )

    def trainer() -> transformers.Trainer:
        return transformers.Trainer(model=DinoForObjectDetection(config), args=args, train_dataset=SyntheticDetection("train", 2),
                                    eval_dataset=SyntheticDetection("val", 2), data_collator=make_collate(processor))

    trainer().train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file()  # the shared heads are written once
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2
    metrics = resumed.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    final = tmp_path / "run" / "checkpoint-2"
    config.save_pretrained(final)
    loaded = DinoForObjectDetection.from_pretrained(final)
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.cpu(), msg=name)


def test_trainer_fine_tune_of_a_transformers_resnet_checkpoint_loads_whole_in_transformers(tmp_path):
    """A ``transformers`` checkpoint whose backbone is transformers' own ResNet (``backbone_config``):
    fine-tuned with ``Trainer`` and the documented callback, its checkpoint folder loads in
    ``transformers`` with every backbone weight (same logits) and in ours, without copying files."""
    from models.engine.hf_trainer import CheckpointConfigCallback, check_trainer_checkpoint

    settings = dict(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False, num_feature_levels=2, d_model=32,
        backbone_config=transformers.ResNetConfig(depths=[1, 1, 1, 1], layer_type="basic", hidden_sizes=[64, 128, 256, 512], out_features=["stage3", "stage4"]),
        encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        num_queries=8, encoder_n_points=2, decoder_n_points=2, dropout=0.0, auxiliary_loss=True, id2label=dict(enumerate(SPEC.classes)),
    )
    torch.manual_seed(0)
    reference = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(**settings))
    reference.save_pretrained(tmp_path / "hf")
    model = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "hf").train()
    assert any(key.startswith("model.backbone.conv_encoder.model.embedder.") for key in model.state_dict())  # transformers' names
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1, save_steps=1, learning_rate=1e-3,
        remove_unused_columns=False, report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=SyntheticDetection("train", 2), data_collator=make_collate(processor),
                                   callbacks=[CheckpointConfigCallback()])
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "config.json").is_file()  # written by the callback
    theirs, info = transformers.DeformableDetrForObjectDetection.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not [key for key in info["missing_keys"] if "backbone" in key], info  # the backbone loads whole
    ours = DeformableDetrForObjectDetection.from_pretrained(checkpoint)
    batch = make_collate(processor)([SyntheticDetection("val", 2)[i] for i in range(2)])
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(batch["pixel_values"], batch["pixel_mask"]).logits
        torch.testing.assert_close(theirs.eval()(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"]).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(batch["pixel_values"], batch["pixel_mask"]).logits, expected, atol=1e-4, rtol=1e-4)
    # a truncated file is named before Trainer's resume would fail on it without a name
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        check_trainer_checkpoint(checkpoint)
    optimizer = checkpoint / "optimizer.pt"
    if optimizer.is_file():
        weights.unlink()
        (checkpoint / "pytorch_model.bin").write_bytes(b"")
        optimizer.write_bytes(optimizer.read_bytes()[:100])
        with pytest.raises(ValueError, match="(pytorch_model.bin|optimizer.pt)"):
            check_trainer_checkpoint(checkpoint)
