"""The python code blocks of docs/custom_variant.md run, in order, in one namespace."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "custom_variant.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_custom_variant_doc_runs(capsys):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    namespace = {"__name__": "custom_variant_doc"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {index}]", "exec"), namespace)
    # the blocks really built and trained something
    assert torch.isfinite(namespace["total"])
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(namespace["losses"])
    assert namespace["out"].intermediate_reference_points.shape == (2, 3, 20, 4)
    assert namespace["dense_out"].last_hidden_state.shape == (2, 20, 64)
    assert "loss_ce_1" in capsys.readouterr().out
