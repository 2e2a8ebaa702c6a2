"""SetCriterion extension points: suffix chains, unknown terms raise, extra losses by registry and
by subclass, the known matching through losses_for."""

import warnings

import pytest
import torch

from detr_blocks import SetCriterion, weight_names


def problem(batch=2, queries=6, classes=4, sizes=(2, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=generator)
    boxes = torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.2
    targets = [
        {"class_labels": torch.randint(0, classes, (n,), generator=generator), "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.2}
        for n in sizes
    ]
    return {"logits": logits, "pred_boxes": boxes}, targets


@pytest.mark.parametrize(
    "name,expected",
    [
        ("loss_ce", ["loss_ce"]),
        ("loss_ce_3", ["loss_ce_3", "loss_ce"]),
        ("loss_ce_dn_3", ["loss_ce_dn_3", "loss_ce_dn", "loss_ce"]),
        ("loss_bbox_enc", ["loss_bbox_enc", "loss_bbox"]),
        ("loss_giou_dn", ["loss_giou_dn", "loss_giou"]),
        ("loss_bbox_interm", ["loss_bbox_interm", "loss_bbox"]),
        ("loss_bbox_enc_0", ["loss_bbox_enc_0", "loss_bbox_enc", "loss_bbox"]),
        ("cardinality_error_dn_1", ["cardinality_error_dn_1", "cardinality_error_dn", "cardinality_error"]),
        ("loss_ce_xyz", ["loss_ce_xyz", "loss_ce"]),
        ("loss_bbox_0_one2many", ["loss_bbox_0_one2many", "loss_bbox_0", "loss_bbox"]),
        ("loss_ce_group3_1", ["loss_ce_group3_1", "loss_ce_group3", "loss_ce"]),
        ("class_error", ["class_error"]),
    ],
)
def test_weight_names(name, expected):
    assert weight_names(name) == expected


@pytest.mark.parametrize(
    "name,weight",
    [("loss_ce_dn_3", 2.0), ("loss_bbox_enc", 5.0), ("loss_giou_dn", 7.0), ("loss_giou_dn_2", 7.0), ("loss_ce_0", 0.5), ("loss_ce_xyz", 2.0),
     ("loss_bbox_0_one2many", 5.0), ("loss_xyz", None)],
)
def test_suffix_chains_resolve_most_specific_first(name, weight):
    criterion = SetCriterion(4, weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_giou_dn": 7.0, "loss_ce_0": 0.5})
    assert criterion.weight_of(name) == weight


def test_unweighted_terms_raise_instead_of_dropping_out():
    outputs, targets = problem()
    criterion = SetCriterion(4)
    total, losses = criterion(outputs, targets)
    with pytest.raises(ValueError, match="loss_xyz_0"):
        criterion.weighted_total({**losses, "loss_xyz_0": torch.tensor(1.0)}, total)
    # denoising terms were silently dropped by the old `_<digit>|_enc` rule; now they are weighted
    dn = criterion.weighted_total({"loss_ce_dn": torch.tensor(1.0), "loss_bbox_dn_2": torch.tensor(1.0)}, total)
    assert dn.item() == pytest.approx(2.0 + 5.0)
    # logged terms (and their suffixed forms) are reported, not added
    assert criterion.weighted_total({"cardinality_error_dn_1": torch.tensor(3.0), "class_error": torch.tensor(50.0)}, total).item() == 0


def test_extra_loss_by_registry():
    outputs, targets = problem()

    def count(outputs, targets, indices, num_boxes):
        return {"loss_count": outputs["logits"].new_tensor(sum(len(q) for q, _ in indices) / num_boxes)}  # matched / boxes = 1

    base_total, base = SetCriterion(4)(outputs, targets)
    criterion = SetCriterion(4, weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_count": 3.0},
                             losses=("labels", "boxes", "cardinality", "count"), extra_losses={"count": count})
    total, losses = criterion(outputs, targets)
    assert losses["loss_count"].item() == 1.0
    torch.testing.assert_close(total, base_total + 3.0)
    # the same loss without a weight raises at forward
    unweighted = SetCriterion(4, losses=("labels", "count"), extra_losses={"count": count})
    with pytest.raises(ValueError, match="loss_count"):
        unweighted(outputs, targets)
    with pytest.raises(ValueError, match="losses"):
        SetCriterion(4, losses=("count",))


class CenterCriterion(SetCriterion):
    loss_names = SetCriterion.loss_names + ("center",)

    def get_loss(self, name, outputs, targets, indices, num_boxes, *, log=False):
        if name != "center":
            return super().get_loss(name, outputs, targets, indices, num_boxes, log=log)
        pred = torch.cat([outputs["pred_boxes"][b, q, :2] for b, (q, _) in enumerate(indices)])
        gt = torch.cat([t["boxes"][j, :2] for t, (_, j) in zip(targets, indices)])
        return {"loss_center": (pred - gt).abs().sum() / num_boxes}


def test_extra_loss_by_subclass_with_auxiliary_suffixes():
    outputs, targets = problem()
    outputs["auxiliary_outputs"] = [problem(seed=1)[0]]
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_center": 1.0, "loss_center_0": 0.0}
    criterion = CenterCriterion(4, weight_dict=weights, losses=("labels", "boxes", "center"))
    total, losses = criterion(outputs, targets)
    assert {"loss_center", "loss_center_0"} <= set(losses)
    expected = sum(criterion.weight_of(k) * v for k, v in losses.items() if criterion.weight_of(k) is not None)
    torch.testing.assert_close(total, expected)
    assert criterion.weight_of("loss_center_0") == 0.0


def test_losses_for_with_known_indices():
    outputs, targets = problem()
    criterion = SetCriterion(4)
    indices = [(torch.tensor([0, 1]), torch.tensor([1, 0])), (torch.tensor([5, 4, 3]), torch.tensor([0, 1, 2]))]
    losses = criterion.losses_for(outputs, targets, 5.0, indices=indices)
    l1 = sum((outputs["pred_boxes"][b, q] - targets[b]["boxes"][t]).abs().sum() for b, (qs, ts) in enumerate(indices) for q, t in zip(qs, ts))
    torch.testing.assert_close(losses["loss_bbox"], l1 / 5.0)
    assert "class_error" not in losses


def test_missing_builtin_weight_warns_and_is_logged():
    with pytest.warns(UserWarning, match="loss_giou"):
        criterion = SetCriterion(4, weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0})
    outputs, targets = problem()
    total, losses = criterion(outputs, targets)
    torch.testing.assert_close(total, losses["loss_ce"] + losses["loss_bbox"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SetCriterion(4, weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 0.0})
