"""Export: torch.export with the compiled op; ONNX (reference attention) checked with onnxruntime."""

import warnings

import pytest
import torch

import models

SMALL = dict(
    backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, two_stage_num_proposals=10, num_labels=5, dropout=0.0,
)


class LogitsAndBoxes(torch.nn.Module):
    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, pixel_values, pixel_mask):
        out = self.detector(pixel_values, pixel_mask)
        return out.logits, out.pred_boxes


def inputs():
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 64, 96)
    pixel_mask = torch.ones(1, 64, 96, dtype=torch.long)
    pixel_mask[:, :, 80:] = 0
    return pixel_values, pixel_mask


def test_torch_export_of_the_detector_with_the_compiled_op():
    import msda

    implementation = msda.active_implementation(torch.device("cpu"))
    if not implementation.name.startswith("compiled"):
        pytest.skip(f"the compiled op is not available here ({implementation.reason}); the reference is not exportable")
    model = models.deformable_detr_two_stage(**SMALL).eval()
    pixel_values, pixel_mask = inputs()
    program = torch.export.export(model, (pixel_values, pixel_mask))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("msda.ms_deform_attn" in target for target in targets), "the op should appear as one node"
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask)
        actual = program.module()(pixel_values, pixel_mask)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    onnxruntime = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = models.deformable_detr_two_stage(**dict(SMALL, decoder_layers=1, num_feature_levels=2, backbone_kwargs={"out_indices": [3, 4]}), disable_custom_kernels=True).eval()
    pixel_values, pixel_mask = inputs()
    path = tmp_path / "detector.onnx"
    # onnxscript 0.7.2's graph optimizer drops a node of this graph: export unoptimized
    options = {"dynamo": True, "optimize": False} if dynamo else {"dynamo": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsAndBoxes(model), (pixel_values, pixel_mask), path, input_names=["pixel_values", "pixel_mask"],
                          output_names=["logits", "pred_boxes"], **options)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(None, {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask)
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(boxes), expected.pred_boxes, atol=1e-4, rtol=1e-4)
