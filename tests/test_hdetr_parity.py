"""H-Deformable-DETR (hybrid matching) against the authors' code: checkpoints written by their training
script, with random weights, give their evaluation outputs (one-to-one queries, 1e-4) and, in training
mode with labels, their hybrid loss: the weighted total (relative 1e-4), every term of their
``train_hybrid`` under its name (one-to-many terms included) and the gradients of a few parameters.

The fixtures (tests/fixtures/hdetr, made by tests/fixtures/hdetr/generate.py from the original source;
what the original computes is described in tests/fixtures/hdetr/README.md) use a narrow ResNet with
resnet50's module tree so that they stay small; the test builds the same network and passes it in as
the backbone body.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models import DeformableDetrForObjectDetection
from tests.conftest import narrow_resnet_body

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hdetr"
CONFIGS = sorted(path.name for path in FIXTURES.iterdir() if (path / "checkpoint.pth").is_file())
LOGGED_TERMS = ("class_error", "cardinality_error")  # in their loss dict, not in the total


def _load(name: str) -> tuple[DeformableDetrForObjectDetection, dict, dict]:
    folder = FIXTURES / name
    args = json.loads((folder / "args.json").read_text())
    model, report = DeformableDetrForObjectDetection.from_pretrained(
        folder / "checkpoint.pth", backbone_body=narrow_resnet_body(args), trust_pickle=True, output_loading_info=True
    )
    return model.float(), load_file(folder / "expected.safetensors"), {"args": args, "report": report}


def _inputs(expected: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return expected["pixel_values"].float(), expected["pixel_mask"].long()  # stored in fp16 (exact values)


def _labels(expected: dict) -> list[dict[str, torch.Tensor]]:
    count = len(expected["pixel_values"])
    return [{"class_labels": expected[f"labels_{i}_class_labels"], "boxes": expected[f"labels_{i}_boxes"]} for i in range(count)]


def _terms(expected: dict) -> dict[str, torch.Tensor]:
    return {key[len("loss/"):]: value for key, value in expected.items() if key.startswith("loss/")}


def _train_step(model: DeformableDetrForObjectDetection, expected: dict):
    model.train()
    out = model(*_inputs(expected), labels=_labels(expected))
    assert out.loss is not None and out.loss_dict is not None, "labels in train mode must give loss and loss_dict"
    return out


def test_fixtures_are_there():
    assert len(CONFIGS) >= 3, f"expected at least three H-Deformable-DETR fixtures in {FIXTURES}, found {CONFIGS}"


@pytest.mark.parametrize("name", CONFIGS)
def test_original_checkpoint_gives_the_original_evaluation_outputs(name):
    model, expected, info = _load(name)
    assert info["report"].clean, info["report"].describe()
    model.eval()
    with torch.no_grad():
        out = model(*_inputs(expected))
    # engine.evaluate: the one-to-one queries only, [B, num_queries_one2one, K]
    assert out.logits.shape == expected["logits"].shape, (out.logits.shape, expected["logits"].shape)
    torch.testing.assert_close(out.logits, expected["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pred_boxes, expected["pred_boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_loss_is_the_hybrid_loss(name):
    model, expected, info = _load(name)
    out = _train_step(model, expected)
    # the one-to-one queries come first: their train-mode predictions are the original's
    num_one2one = info["args"]["num_queries_one2one"]
    torch.testing.assert_close(out.logits[:, :num_one2one].detach(), expected["train_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pred_boxes[:, :num_one2one].detach(), expected["train_pred_boxes"], atol=1e-4, rtol=0)

    theirs = _terms(expected)
    ours = dict(out.loss_dict)
    their_losses = sorted(key for key in theirs if not key.startswith(LOGGED_TERMS))
    our_losses = sorted(key for key in ours if not key.startswith(LOGGED_TERMS))
    assert our_losses == their_losses, f"loss terms differ: only ours {sorted(set(our_losses) - set(their_losses))}, only theirs {sorted(set(their_losses) - set(our_losses))}"
    for key in their_losses:
        torch.testing.assert_close(ours[key].detach().reshape(()).float(), theirs[key], rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    for key in sorted(set(theirs) & set(ours) - set(their_losses)):  # logged values, where we log them too
        torch.testing.assert_close(torch.as_tensor(ours[key]).detach().reshape(()).float(), theirs[key], rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    torch.testing.assert_close(out.loss.detach().reshape(()).float(), expected["loss_total"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_gradients_are_the_original_ones(name):
    """Gradients of the weighted total for a few parameters (found here by their value: the checkpoint
    tensor upcast to fp32). look_forward_twice changes only these, not any forward value."""
    model, expected, info = _load(name)
    checkpoint = torch.load(FIXTURES / name / "checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    parameters = dict(model.named_parameters())  # one entry per tensor, also for shared heads
    wanted = {}
    for key in sorted(key for key in expected if key.startswith("grad/")):
        original = key[len("grad/"):]
        value = checkpoint[original].float()
        same = [our for our, p in parameters.items() if p.shape == value.shape and torch.equal(p.detach(), value)]
        assert len(same) == 1, f"{original}: expected one parameter holding its value, found {same}"
        wanted[original] = same[0]
    assert wanted, "the fixture stores no gradients"
    out = _train_step(model, expected)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    for original, our in wanted.items():
        grad = parameters[our].grad
        assert grad is not None, f"{our} ({original}) got no gradient"
        reference = expected[f"grad/{original}"]
        scale = float(reference.abs().max())
        torch.testing.assert_close(grad, reference, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, o=original, u=our: f"{o} ({u}): {m}")


@pytest.mark.parametrize("name", ["hdetr_refine_lft"])
def test_save_pretrained_keeps_the_hybrid_settings(name, tmp_path):
    model, expected, info = _load(name)
    model.save_pretrained(tmp_path)
    again = DeformableDetrForObjectDetection.from_pretrained(tmp_path, backbone_body=narrow_resnet_body(info["args"]))
    assert again.config == model.config
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(*_inputs(expected)).logits, model(*_inputs(expected)).logits, atol=0, rtol=0)
    torch.testing.assert_close(_train_step(again, expected).loss.detach().reshape(()).float(), expected["loss_total"], rtol=1e-4, atol=0)
