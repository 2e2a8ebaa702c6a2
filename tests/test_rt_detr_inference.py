"""``prepare_for_inference``: the prepared RT-DETR computes what the unprepared one computes in eval
mode (1e-4), has no batch norm or unfused RepVGG block left, runs its convolutions channels-last,
and refuses a model in training mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detr_blocks.repvgg import RepVggBlock
from models import RTDetrConfig, RTDetrForObjectDetection
from models.backbones.frozen_batch_norm import fold_batch_norms
from models.rt_detr.inference import prepare_for_inference

TINY = dict(
    backbone_config={"model_type": "rt_detr_resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
                     "layer_type": "basic", "out_indices": [2, 3, 4]},
    d_model=32, encoder_hidden_dim=32, encoder_in_channels=[16, 16, 16], decoder_in_channels=[32, 32, 32], encoder_ffn_dim=32, decoder_ffn_dim=32,
    encoder_attention_heads=2, decoder_attention_heads=2, decoder_layers=2, num_queries=10, num_labels=5,
    hidden_expansion=0.5, disable_custom_kernels=True,
)


def tiny_detector(seed: int = 0) -> RTDetrForObjectDetection:
    """A tiny RT-DETR whose batch norms (frozen in the backbone, plain elsewhere) have random
    statistics and affine maps, so that folding them is not the identity."""
    torch.manual_seed(seed)
    model = RTDetrForObjectDetection(RTDetrConfig(**TINY)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))


def run(model: nn.Module, pixel_values: torch.Tensor):
    with torch.inference_mode():
        return model(pixel_values)


def assert_same_outputs(prepared, reference) -> None:
    for name in ("logits", "pred_boxes", "init_reference_points", "enc_topk_logits"):
        torch.testing.assert_close(getattr(prepared, name), getattr(reference, name), atol=1e-4, rtol=0, msg=name)
    for level, (mine, theirs) in enumerate(zip(prepared.encoder_last_hidden_state, reference.encoder_last_hidden_state)):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0, msg=f"encoder level {level}")


def test_prepared_model_computes_the_same_outputs(pixel_values):
    model = tiny_detector()
    reference = run(model, pixel_values)
    prepared = prepare_for_inference(copy.deepcopy(model))
    assert_same_outputs(run(prepared, pixel_values), reference)


def test_prepared_model_has_no_norms_and_channels_last_convolutions():
    prepared = prepare_for_inference(tiny_detector())
    left = [name for name, module in prepared.named_modules() if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d, RepVggBlock))]
    assert left == []
    convolutions = [module for module in prepared.modules() if isinstance(module, nn.Conv2d)]
    assert convolutions and all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convolutions)


def test_preparing_twice_changes_nothing_more(pixel_values):
    once = prepare_for_inference(tiny_detector())
    state = {key: value.clone() for key, value in once.state_dict().items()}
    twice = prepare_for_inference(once)
    assert twice is once
    assert state.keys() == twice.state_dict().keys()
    assert all(torch.equal(state[key], value) for key, value in twice.state_dict().items())


def test_without_channels_last_the_weights_keep_their_layout(pixel_values):
    model = tiny_detector()
    prepared = prepare_for_inference(copy.deepcopy(model), channels_last=False)
    assert all(module.weight.is_contiguous() for module in prepared.modules() if isinstance(module, nn.Conv2d))
    assert_same_outputs(run(prepared, pixel_values), run(model, pixel_values))


def test_training_mode_is_refused_by_name():
    model = tiny_detector().train()
    with pytest.raises(ValueError, match=r"model must be in eval mode"):
        prepare_for_inference(model)
    model.eval()
    model.model.encoder.train()
    with pytest.raises(ValueError, match=r"model\.encoder"):
        prepare_for_inference(model)
    assert any(isinstance(module, RepVggBlock) for module in model.modules())  # nothing was changed


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        prepare_for_inference({"model": 1})


def test_fold_batch_norms_leaves_a_training_batch_norm_alone():
    layer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fold_batch_norms(layer)
    assert isinstance(layer[1], nn.BatchNorm2d)
    layer.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        layer[1].running_var.uniform_(0.5, 2.0)
        expected = layer(x)
        fold_batch_norms(layer)
        assert isinstance(layer[1], nn.Identity)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_detections_only_gives_the_same_detections_without_token_boxes(pixel_values):
    """The box head on the selected tokens only: the same top-k, boxes, logits and proposals;
    only ``enc_outputs_coord_logits`` (every token's box) is not computed."""
    model = tiny_detector(seed=2)
    reference = run(model, pixel_values)
    prepared = run(prepare_for_inference(copy.deepcopy(model), detections_only=True), pixel_values)
    assert_same_outputs(prepared, reference)
    torch.testing.assert_close(prepared.enc_topk_bboxes, reference.enc_topk_bboxes, atol=1e-4, rtol=0)
    assert prepared.enc_outputs_coord_logits is None and reference.enc_outputs_coord_logits is not None
    with pytest.raises(TypeError, match="detections_only"):
        prepare_for_inference(copy.deepcopy(model), detections_only="yes")
