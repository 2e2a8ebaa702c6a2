"""``msda.integrations.hf.enable`` on ``transformers``' own RT-DETR (4.57.6), built from the tiny config
the parity tests use: every decoder cross-attention runs through our op, and the outputs (eval) and
the loss and its gradients (training with labels, denoising included) equal those without it; after
``disable`` the model is transformers' again. With it enabled, transformers' model still equals ours
on the same weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from msda.integrations import hf
from tests.conftest import tiny_rt_detr_fields

transformers = pytest.importorskip("transformers")

TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def _model(num_denoising: int) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.RTDetrConfig(**tiny_rt_detr_fields(num_denoising=num_denoising))
        model = transformers.RTDetrForObjectDetection(config)
    for name, module in model.named_modules():  # spread the sampling points over the maps and past their borders
        if name.endswith("encoder_attn"):
            torch.nn.init.uniform_(module.sampling_offsets.bias, -4.0, 4.0)
    return model


def _labels() -> list[dict[str, torch.Tensor]]:
    return [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
            {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def _run(model: torch.nn.Module, pixel_values: torch.Tensor, training: bool) -> dict[str, torch.Tensor]:
    model.train(training)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same denoising noise with and without the op
    if not training:
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
        return {"logits": out.logits, "pred_boxes": out.pred_boxes}
    out = model(pixel_values=pixel_values, labels=_labels())
    out.loss.backward()
    grads = {f"grad.{name}": param.grad.clone() for name, param in model.named_parameters() if param.grad is not None and "encoder_attn" in name}
    return {"loss": out.loss.detach(), **{f"loss_dict.{k}": v.detach() for k, v in out.loss_dict.items()}, **grads}


@pytest.mark.parametrize(("training", "num_denoising"), [(False, 0), (True, 0), (True, 6)], ids=["eval", "train", "train_denoising"])
def test_enable_on_transformers_rt_detr_keeps_outputs(training, num_denoising, monkeypatch):
    calls = []
    original = hf.ms_deform_attn
    monkeypatch.setattr(hf, "ms_deform_attn", lambda *args: calls.append(1) or original(*args))
    model = _model(num_denoising)
    pixel_values = torch.rand(2, 3, 64, 64)
    expected = _run(model, pixel_values, training)
    assert hf.enable(model) is model
    layers = [name for name, module in model.named_modules() if type(module).__name__ == "RTDetrMultiscaleDeformableAttention"]
    assert len(hf.swapped_modules(model)) == len(layers) == 2
    got = _run(model, pixel_values, training)
    assert len(calls) == len(layers)  # each decoder layer once
    assert got.keys() == expected.keys() and any(key.startswith("grad.") for key in got) == training
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")
    hf.disable(model)
    again = _run(model, pixel_values, training)
    assert len(calls) == len(layers)
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], atol=0, rtol=0, msg=lambda m, key=key: f"{key} after disable: {m}")


def test_enabled_transformers_rt_detr_equals_ours(tmp_path):
    from models import RTDetrForObjectDetection

    theirs = _model(0).eval()
    theirs.save_pretrained(tmp_path)
    ours = RTDetrForObjectDetection.from_pretrained(tmp_path).eval()
    hf.enable(theirs)
    pixel_values = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = theirs(pixel_values=pixel_values), ours(pixel_values)
    torch.testing.assert_close(a.logits, b.logits, **TOLERANCE)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, **TOLERANCE)
