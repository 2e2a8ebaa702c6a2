"""The python blocks of docs/quantization.md run, in order, and say what the page says.

They compile the int8 demo detector with inductor (a minute or two on a 2-core machine), so this file
is apart from tests/test_quantization.py; it skips where the machine cannot run the int8 path.
"""

import pytest
import torch

from tests.doc_examples import DOCS, python_blocks, run_page


def test_quantization_doc_runs_and_matches_the_float_model(capsys, msda_cpu_library):
    pytest.importorskip("torchao")
    from models.quantization import QuantizationUnsupported, check_cpu_support

    try:
        check_cpu_support()
    except QuantizationUnsupported as err:
        pytest.skip(str(err))
    namespace = run_page(DOCS / "quantization.md")
    out = capsys.readouterr().out
    assert "(64, 64) ('logits', 'pred_boxes')" in out
    assert "True False" in out and out.rstrip().endswith("True")

    # the int8 detections are the float model's: same labels, boxes within 2 pixels
    model, processor, inputs, image = (namespace[name] for name in ("model", "processor", "inputs", "image"))
    with torch.no_grad():
        expected = model(**inputs)
    (reference,) = processor.post_process_object_detection(expected, threshold=0.3, target_sizes=[image.size[::-1]])
    result = namespace["result"]
    assert sorted(result["labels"].tolist()) == sorted(reference["labels"].tolist())
    for box in reference["boxes"]:
        assert (result["boxes"] - box).abs().max(dim=1).values.min() <= 2.0

    # the page shows what the block printed
    text = (DOCS / "quantization.md").read_text(encoding="utf-8")
    for line in out.splitlines():
        if line.startswith(("triangle", "circle", "square")):
            assert line in text, f"docs/quantization.md should show {line!r}"
    assert len(python_blocks(text)) == 3
