"""The python code blocks of docs/custom_variant.md run, in order, in one namespace."""

import torch

from tests.doc_examples import DOCS, run_page


def test_custom_variant_doc_runs(capsys):
    namespace = run_page(DOCS / "custom_variant.md")
    # the blocks really built and trained something
    assert torch.isfinite(namespace["total"])
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(namespace["losses"])
    assert namespace["out"].intermediate_reference_points.shape == (2, 3, 20, 4)
    assert namespace["dense_out"].last_hidden_state.shape == (2, 20, 64)
    assert "loss_ce_1" in capsys.readouterr().out
