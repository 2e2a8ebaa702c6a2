"""The python example of docs/rt_detr.md runs: RT-DETR's blocks put together by hand."""

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
