"""The query-group detector: groups never reach the matching queries, each group's loss is what its
definition says (checked by recomputing it with the criterion by hand), and switched-off groups
are exactly the plain model."""

from __future__ import annotations

import pytest
import torch

from models import DeformableDetrConfig, DeformableDetrForObjectDetection
from models.common.query_groups import MATCHING, QueryBlock, QueryLayout, self_attention_mask
from models.ddetr.variants import dn_deformable_detr, group_deformable_detr, h_deformable_detr

SMALL = dict(
    backbone="resnet18", d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    encoder_attention_heads=4, decoder_attention_heads=4, num_queries=8, two_stage_num_proposals=8, num_labels=3,
    auxiliary_loss=True, dropout=0.0, use_pretrained_backbone=False,
)


def _batch() -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 80)
    pixel_mask = torch.ones(2, 64, 80, dtype=torch.long)
    pixel_mask[1, :, 60:] = 0
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    return pixel_values, pixel_mask, labels


def _without_hybrid(model: DeformableDetrForObjectDetection) -> DeformableDetrForObjectDetection:
    """The same weights in a detector without the one-to-many queries (their rows of the learned
    query table dropped)."""
    plain = DeformableDetrForObjectDetection(model.config.copy(num_queries_one2many=0)).train()
    state = model.state_dict()
    key = "model.query_position_embeddings.weight"
    if key in state:
        state[key] = state[key][: model.config.num_queries]
    plain.load_state_dict(state)
    return plain


def test_self_attention_mask_brute_force():
    layout = QueryLayout((QueryBlock("dn", 0, 3), QueryBlock(MATCHING, 3, 4), QueryBlock("one2many", 7, 2)))
    inner = torch.tensor([[False, True, True], [True, False, True], [True, True, False]])
    mask = self_attention_mask(layout, {"dn": inner}, {"dn"}, torch.device("cpu"))
    names = ["dn"] * 3 + [MATCHING] * 4 + ["one2many"] * 2
    for row in range(9):
        for column in range(9):
            a, b = names[row], names[column]
            if a == b:
                expected = bool(inner[row, column]) if a == "dn" else False
            else:
                expected = not (a == "dn" and b == MATCHING)
            assert bool(mask[row, column]) == expected, (row, column)


@pytest.mark.parametrize("variant", ["deformable_detr", "box_refine", "two_stage"])
def test_hybrid_queries_never_reach_the_matching_queries(variant):
    torch.manual_seed(1)
    model = h_deformable_detr(variant, **SMALL, num_queries_one2many=12, k_one2many=3).train()
    pixel_values, pixel_mask, labels = _batch()
    hybrid = model(pixel_values, pixel_mask, labels=labels)
    plain = _without_hybrid(model)(pixel_values, pixel_mask, labels=labels)
    assert hybrid.logits.shape == (2, 8, 3), "training logits hold the one-to-one queries only"
    assert hybrid.group_outputs["one2many"]["logits"].shape == (2, 12, 3)
    torch.testing.assert_close(hybrid.logits, plain.logits, atol=2e-5, rtol=0)
    torch.testing.assert_close(hybrid.pred_boxes, plain.pred_boxes, atol=2e-5, rtol=0)
    for name, value in plain.loss_dict.items():
        torch.testing.assert_close(hybrid.loss_dict[name], value, atol=2e-5, rtol=1e-4)


def test_hybrid_loss_is_the_criterion_on_repeated_targets():
    torch.manual_seed(2)
    k, weight = 3, 0.7
    model = h_deformable_detr("box_refine", **SMALL, num_queries_one2many=12, k_one2many=k, lambda_one2many=weight).train()
    pixel_values, pixel_mask, labels = _batch()
    out = model(pixel_values, pixel_mask, labels=labels)
    one2many = out.group_outputs["one2many"]
    repeated = [{"class_labels": t["class_labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)} for t in labels]
    many_total, many_terms = model.criterion(one2many, repeated)
    matching_total, matching_terms = model.criterion({"logits": out.logits, "pred_boxes": out.pred_boxes, "auxiliary_outputs": out.auxiliary_outputs}, labels)
    torch.testing.assert_close(out.loss, matching_total + weight * many_total, rtol=1e-5, atol=1e-6)
    for name, value in many_terms.items():
        torch.testing.assert_close(out.loss_dict[f"{name}_one2many"], weight * value)  # λ included, as H-DETR reports them
    assert "loss_bbox_0_one2many" in out.loss_dict and "loss_ce_one2many" in out.loss_dict
    out.loss.backward()


def test_eval_runs_the_one_to_one_queries_only():
    model = h_deformable_detr("two_stage", **SMALL, num_queries_one2many=12).eval()
    pixel_values, pixel_mask, _ = _batch()
    with torch.no_grad():
        out = model(pixel_values, pixel_mask)
    assert out.logits.shape == (2, 8, 3) and out.group_outputs is None and out.query_groups is None


def test_dn_number_zero_is_no_denoising():
    pixel_values, pixel_mask, labels = _batch()
    torch.manual_seed(3)
    with_dn = dn_deformable_detr(**SMALL, dn_number=4).train()
    without = dn_deformable_detr(**SMALL, dn_number=0).train()
    result = without.load_state_dict(with_dn.state_dict(), strict=False)
    assert result.unexpected_keys == ["model.label_enc.weight"] and not result.missing_keys  # dn_number=0 is the plain model
    a = with_dn(pixel_values, pixel_mask, labels=labels)
    b = without(pixel_values, pixel_mask, labels=labels)
    assert "dn" in a.group_outputs and b.group_outputs is None
    assert not any("_dn" in name for name in b.loss_dict)
    torch.testing.assert_close(a.logits, b.logits, atol=2e-5, rtol=0)
    for name, value in b.loss_dict.items():
        torch.testing.assert_close(a.loss_dict[name], value, atol=2e-5, rtol=1e-4)
    assert any(name.startswith("loss_giou_dn") for name in a.loss_dict)


def test_dn_number_needs_box_references():
    with pytest.raises(ValueError, match="dn_number"):
        DeformableDetrConfig(**SMALL, dn_number=5)


def test_group_detr_groups_are_independent_copies_of_the_matching_decoder():
    """Group g's training outputs equal the plain model's eval outputs with group g's query table."""
    torch.manual_seed(4)
    groups = 3
    model = group_deformable_detr(**SMALL, group_detr=groups).train()
    pixel_values, pixel_mask, labels = _batch()
    out = model(pixel_values, pixel_mask, labels=labels)
    assert sorted(out.group_outputs) == ["group1", "group2"]
    assert any(name.endswith("_group2") for name in out.loss_dict)
    state = model.state_dict()
    table = state["model.query_position_embeddings.weight"]
    for index in range(groups):
        plain = DeformableDetrForObjectDetection(model.config.copy(group_detr=1)).train()
        single = {**state, "model.query_position_embeddings.weight": table[index * 8 : (index + 1) * 8]}
        plain.load_state_dict(single)
        reference = plain(pixel_values, pixel_mask)
        logits = out.logits if index == 0 else out.group_outputs[f"group{index}"]["logits"]
        torch.testing.assert_close(logits, reference.logits, atol=2e-5, rtol=0)


def test_group_detr_needs_learned_queries():
    with pytest.raises(ValueError, match="group_detr"):
        DeformableDetrConfig(**SMALL, group_detr=2, two_stage=True, with_box_refine=True)


@pytest.mark.parametrize(
    "factory,settings", [(h_deformable_detr, {"num_queries_one2many": 12}), (dn_deformable_detr, {}), (group_deformable_detr, {})]
)
def test_variants_save_and_load_back(tmp_path, factory, settings):
    model = factory(**SMALL, **settings).eval()
    model.save_pretrained(tmp_path)
    again, report = DeformableDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert report.clean, report.describe()
    assert again.config == model.config
    pixel_values, pixel_mask, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values, pixel_mask).logits, model(pixel_values, pixel_mask).logits)


def test_variants_page_runs(capsys):
    from tests.doc_examples import DOCS, run_page

    namespace = run_page(DOCS / "variants.md")
    out = capsys.readouterr().out
    assert namespace["out"].logits.shape == (2, 10, 3)
    assert namespace["out"].group_outputs["one2many"]["pred_boxes"].shape == (2, 50, 4)
    assert "['group1', 'group2']" in out and "loss_giou_dn" in out
