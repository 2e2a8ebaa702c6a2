"""The python examples of docs/rt_detr.md run: the family in use, and its blocks put together by hand."""

import torch

from tests.doc_examples import DOCS, run_page


def test_rt_detr_blocks_example_runs(capsys):
    namespace = run_page(DOCS / "rt_detr.md")
    out = capsys.readouterr().out
    assert namespace["out"].intermediate_reference_points.shape == (1, 2, 10, 4)
    assert namespace["shapes"] == [(16, 12), (8, 6), (4, 3)]
    assert "True" in out
    assert set(namespace["losses"]) == {"loss_vfl", "loss_bbox", "loss_giou"}
    assert torch.isfinite(namespace["total"])
    # the family in use: the same predictions as transformers' model from the saved folder
    assert namespace["gap"] < 1e-4
    assert namespace["prediction"].logits.shape == (1, 20, 3)
    assert {"loss_vfl", "loss_vfl_dn", "loss_vfl_interm"} <= set(namespace["step"].loss_dict)
