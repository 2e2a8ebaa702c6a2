"""Export of ``RTDetrForObjectDetection`` in eval mode, as it is and in its inference form
(``models.rt_detr.inference.prepare_for_inference``: RepVGG blocks fused, batch norms folded):
``torch.export`` with the compiled op, and ONNX (reference attention) run by onnxruntime; outputs
equal eager's to 1e-4."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from models import RTDetrConfig, RTDetrForObjectDetection
from tests.conftest import tiny_rt_detr_fields

TOLERANCE = dict(atol=1e-4, rtol=1e-4)
HAS_PREPARE = importlib.util.find_spec("models.rt_detr.inference") is not None


class LogitsAndBoxes(torch.nn.Module):
    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, pixel_values):
        out = self.detector(pixel_values)
        return out.logits, out.pred_boxes


def _model(prepared: bool, **overrides) -> RTDetrForObjectDetection:
    torch.manual_seed(0)
    model = RTDetrForObjectDetection(RTDetrConfig(**tiny_rt_detr_fields(**overrides))).eval()
    if prepared:
        if not HAS_PREPARE:
            pytest.skip("models.rt_detr.inference is not in this tree")
        from models.rt_detr.inference import prepare_for_inference

        prepare_for_inference(model, channels_last=False)
    return model


def _pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


@pytest.mark.parametrize("prepared", [False, True], ids=["as_trained", "prepared"])
def test_torch_export_of_rt_detr_with_the_compiled_op(prepared):
    import msda

    implementation = msda.active_implementation(torch.device("cpu"))
    if not implementation.name.startswith("compiled"):
        pytest.skip(f"the compiled op is not available here ({implementation.reason}); the reference is not exportable")
    reference = _model(False)
    model = _model(prepared, disable_custom_kernels=False)  # RT-DETR's default (as transformers') is the reference attention
    pixel_values = _pixels()
    program = torch.export.export(LogitsAndBoxes(model), (pixel_values,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("msda.ms_deform_attn" in target for target in targets), "the op should appear as one node"
    if prepared:
        assert not any("batch_norm" in target for target in targets), "prepare_for_inference folds every batch norm"
    with torch.no_grad():
        expected = reference(pixel_values)
        logits, boxes = program.module()(pixel_values)
    torch.testing.assert_close(logits, expected.logits, **TOLERANCE)
    torch.testing.assert_close(boxes, expected.pred_boxes, **TOLERANCE)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_rt_detr_runs_in_onnxruntime(tmp_path, dynamo):
    """The prepared model (the deployment form; the unprepared one exports too, in 20 s more) through
    both of torch's ONNX exporters (the TorchScript one traces sizes as tensors)."""
    prepared = True
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    reference = _model(False)
    model = _model(prepared, disable_custom_kernels=True)
    pixel_values = _pixels()
    path = tmp_path / "rt_detr.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsAndBoxes(model), (pixel_values,), path, input_names=["pixel_values"], output_names=["logits", "pred_boxes"],
                          **({"dynamo": True, "optimize": False} if dynamo else {"dynamo": False, "opset_version": 17}))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(None, {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        expected = reference(pixel_values)
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, **TOLERANCE)
    torch.testing.assert_close(torch.from_numpy(boxes), expected.pred_boxes, **TOLERANCE)
