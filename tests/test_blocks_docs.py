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


def test_custom_variant_hybrid_builder(capsys):
    """Part A: the user-written H-DETR trains, equals the built-in one and joins the registry."""
    from models import registry

    namespace = run_page(DOCS / "custom_variant.md")
    out = capsys.readouterr().out
    hybrid = namespace["hybrid_out"]
    assert hybrid.logits.shape == (2, 10, 3) and hybrid.group_outputs["one2many"]["logits"].shape == (2, 40, 3)
    assert {"loss_bbox_one2many", "loss_bbox_0_one2many"} <= set(hybrid.loss_dict)
    assert "True" in out
    assert registry.family("my-hybrid-detr").detector_class is namespace["HybridDeformableDetr"]


def test_custom_variant_extension_examples(capsys):
    namespace = run_page(DOCS / "custom_variant.md")
    out = capsys.readouterr().out
    assert "False True" in out  # damped refinement detaches; look-forward-twice records with grad
    assert namespace["dino_out"].intermediate_hidden_states.shape == (2, 3, 20, 64)
    assert {"loss_center", "loss_center_0", "loss_center_1", "loss_center_enc"} <= set(namespace["center_losses"])
    assert "refused: loss term 'loss_center' has no weight" in out
    assert namespace["swiglu_memory"].shape == namespace["encoded"].shape
    assert not any(k.endswith("norm.bias") for k in namespace["rms_layer"].state_dict())


def test_custom_variant_injected_query_selection():
    namespace = run_page(DOCS / "custom_variant.md")
    grid = namespace["grid_out"].init_reference_points
    assert grid.shape == (1, 16, 2)
    torch.testing.assert_close(grid[0, :2], torch.tensor([[0.125, 0.125], [0.375, 0.125]]))
    assert namespace["grid_out"].last_hidden_state.shape == (1, 16, 64)
    # the injected module's parameters are stored at the model's level, as the built-in selections'
    assert "content.weight" in namespace["grid_model"].state_dict()
