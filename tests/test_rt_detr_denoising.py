"""RT-DETR's contrastive denoising against ``transformers`` 4.57.6: the queries of
``padded_denoising_queries`` (and of ``RTDetrDenoisingGroup``) bit-identical to
``get_contrastive_denoising_training_group``'s for the same torch seed and embedding; injected noise;
the denoising loss terms equal to ``RTDetrLoss``'s ``_dn_<i>`` terms; the group's switches, state-dict
key and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RTDetrConfig
from transformers.loss.loss_rt_detr import RTDetrLoss
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group

from detr_blocks import (
    HungarianMatcher,
    PaddedDenoisingNoise,
    SetCriterion,
    VarifocalLoss,
    denoising_losses,
    denoising_matching_indices,
    draw_padded_denoising_noise,
    inverse_sigmoid,
    padded_denoising_meta,
    padded_denoising_queries,
)
from models.common.deformable_transformer import _flatten_state_dict, _nest_state_dict
from models.rt_detr.denoising_group import RTDetrDenoisingGroup

K, C, Q = 5, 8, 6

# (target counts per image, num_denoising)
LAYOUTS = {
    "equal": ((3, 3), 100),
    "unequal_padded": ((2, 5, 1), 100),
    "image_without_targets": ((0, 3), 20),
    "one_target": ((1,), 10),
    "num_denoising_below_max_targets": ((5, 3), 2),
}


def make_targets(counts, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def boxes(n):
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        return torch.cat([centre, torch.rand(n, 2, generator=generator) * 0.3 + 0.05], -1)

    return [{"class_labels": torch.randint(0, K, (n,), generator=generator), "boxes": boxes(n)} for n in counts]


def make_embedding(seed=1):
    embedding = nn.Embedding(K + 1, C, padding_idx=K)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(K + 1, C, generator=torch.Generator().manual_seed(seed)))  # padding row too
    return embedding


def reference(targets, embedding, num_denoising, label_noise_ratio, box_noise_scale, seed):
    torch.manual_seed(seed)
    return get_contrastive_denoising_training_group(targets, K, Q, embedding, num_denoising, label_noise_ratio, box_noise_scale)


def assert_same_as_reference(ours, theirs, targets):
    content, box_logits, attn_mask, meta = theirs
    assert torch.equal(ours.content, content)
    assert torch.equal(ours.box_logits, box_logits)
    assert set(attn_mask.unique().tolist()) <= {0.0, float("-inf")}
    assert ours.attn_mask.dtype == torch.bool and torch.equal(ours.attn_mask, attn_mask == float("-inf"))
    assert ours.meta.num_dn_group == meta["dn_num_group"]
    assert [ours.meta.pad_size, Q] == meta["dn_num_split"]
    positives = [query for query, _ in denoising_matching_indices(targets, ours.meta)]
    assert len(positives) == len(meta["dn_positive_idx"])
    for mine, theirs_idx in zip(positives, meta["dn_positive_idx"]):
        assert torch.equal(mine, theirs_idx)


@pytest.mark.parametrize("box_noise_scale", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("label_noise_ratio", [0.0, 0.5])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_seed_gives_the_references_queries_bit_for_bit(layout, label_noise_ratio, box_noise_scale):
    counts, num_denoising = LAYOUTS[layout]
    targets, embedding = make_targets(counts), make_embedding()
    theirs = reference(targets, embedding, num_denoising, label_noise_ratio, box_noise_scale, seed=7)
    next_theirs = torch.rand(3)
    torch.manual_seed(7)
    ours = padded_denoising_queries(targets, K, embedding, Q, num_denoising=num_denoising,
                                    label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)
    assert_same_as_reference(ours, theirs, targets)
    assert torch.equal(torch.rand(3), next_theirs)  # the same number of draws consumed


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_without_box_noise_the_boxes_are_not_logits(layout):
    """The authors' definition with ``box_noise_scale == 0``: the padded boxes themselves (zeros in
    padded slots), no ``inverse_sigmoid``; written out here independently of both codes."""
    counts, num_denoising = LAYOUTS[layout]
    targets = make_targets(counts)
    ours = padded_denoising_queries(targets, K, make_embedding(), Q, num_denoising=num_denoising, box_noise_scale=0.0)
    size, max_targets = ours.meta.group_size, max(counts)
    for image, target in enumerate(targets):
        for slot in range(ours.meta.pad_size):
            j = slot % size % max_targets
            expected = target["boxes"][j] if j < counts[image] else torch.zeros(4)
            assert torch.equal(ours.box_logits[image, slot], expected)


def test_no_targets_anywhere_gives_no_queries():
    targets = make_targets((0, 0))
    assert reference(targets, make_embedding(), 100, 0.5, 1.0, seed=0)[0] is None
    assert padded_denoising_queries(targets, K, make_embedding(), Q) is None
    assert padded_denoising_meta([0, 0], 100) is None


@pytest.mark.parametrize(("label_noise_ratio", "box_noise_scale"), [(0.5, 1.0), (0.5, 0.0), (0.0, 0.4)])
def test_injected_noise_equals_the_seeded_path(label_noise_ratio, box_noise_scale):
    targets, embedding = make_targets((2, 5, 0)), make_embedding()
    meta = padded_denoising_meta([2, 5, 0], 100)
    torch.manual_seed(3)
    noise = draw_padded_denoising_noise(3, meta, K, label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)
    assert (noise.label_flip is None) == (label_noise_ratio == 0) and (noise.box_sign is None) == (box_noise_scale == 0)
    injected = padded_denoising_queries(targets, K, embedding, Q, label_noise_ratio=label_noise_ratio,
                                        box_noise_scale=box_noise_scale, noise=noise)
    torch.manual_seed(3)
    seeded = padded_denoising_queries(targets, K, embedding, Q, label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)
    for mine, other in zip(injected, seeded):
        assert mine == other if not isinstance(mine, torch.Tensor) else torch.equal(mine, other)


def test_hand_made_noise_by_hand():
    """Every real label flipped to a chosen one, padded ones kept; every corner moved by + (0 for
    positives, one half-size · scale for negatives), written out."""
    counts, scale = (2, 1), 0.5
    targets, embedding = make_targets(counts), make_embedding()
    meta = padded_denoising_meta(list(counts), 4)  # 2 groups of 4
    pad = meta.pad_size
    noise = PaddedDenoisingNoise(
        label_flip=torch.zeros(2, pad),
        new_labels=(torch.arange(2 * pad) % K).view(2, pad).to(torch.int32),
        box_sign=torch.ones(2, pad, 4),
        box_magnitude=torch.zeros(2, pad, 4),
    )
    dn = padded_denoising_queries(targets, K, embedding, Q, num_denoising=4, label_noise_ratio=0.2, box_noise_scale=scale, noise=noise)
    for image, target in enumerate(targets):
        for slot in range(pad):
            j, negative = slot % 4 % 2, slot % 4 >= 2
            if j < counts[image]:
                label = int(noise.new_labels[image, slot])
                cx, cy, w, h = target["boxes"][j].tolist()
                move = 1.0 if negative else 0.0
                x0, y0 = cx - w / 2 + move * scale * w / 2, cy - h / 2 + move * scale * h / 2
                x1, y1 = min(cx + w / 2 + move * scale * w / 2, 1.0), min(cy + h / 2 + move * scale * h / 2, 1.0)
                box = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
            else:
                label, box = K, torch.zeros(4)
            torch.testing.assert_close(dn.content[image, slot], embedding.weight[label], rtol=0, atol=0)
            torch.testing.assert_close(dn.box_logits[image, slot], inverse_sigmoid(box, 1e-5), rtol=1e-5, atol=1e-5)


def _criterion(config):
    weights = {"loss_vfl": config.weight_loss_vfl, "loss_bbox": config.weight_loss_bbox, "loss_giou": config.weight_loss_giou}
    matcher = HungarianMatcher(config.matcher_class_cost, config.matcher_bbox_cost, config.matcher_giou_cost, config.matcher_alpha, config.matcher_gamma)
    criterion = SetCriterion(K, matcher, weight_dict=weights, losses=("vfl", "boxes"),
                             extra_losses={"vfl": VarifocalLoss(config.focal_loss_alpha, config.focal_loss_gamma)})
    return criterion, weights


@pytest.mark.parametrize(("layout", "layers"), [("unequal_padded", 3), ("image_without_targets", 2), ("num_denoising_below_max_targets", 1)])
def test_denoising_terms_equal_rt_detr_loss(layout, layers):
    counts, num_denoising = LAYOUTS[layout]
    targets = make_targets(counts)
    group = RTDetrDenoisingGroup(K, C, num_denoising=num_denoising)
    torch.manual_seed(5)
    dn = padded_denoising_queries(targets, K, group.denoising_class_embed, Q, num_denoising=num_denoising)
    _, _, _, their_meta = reference(targets, group.denoising_class_embed, num_denoising, 0.5, 1.0, seed=5)
    generator = torch.Generator().manual_seed(11)
    batch, pad = len(counts), dn.meta.pad_size
    logits = torch.randn(layers, batch, pad, K, generator=generator)
    boxes = torch.cat([torch.rand(layers, batch, pad, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(layers, batch, pad, 2, generator=generator) * 0.3 + 0.05], -1)
    config = RTDetrConfig(num_labels=K, decoder_layers=layers)
    theirs = RTDetrLoss(config)({
        "logits": torch.randn(batch, Q, K, generator=generator), "pred_boxes": boxes[0, :, :Q],
        "dn_auxiliary_outputs": [{"logits": logits[i], "pred_boxes": boxes[i]} for i in range(layers)],
        "denoising_meta_values": their_meta,
    }, targets)
    their_dn = {name: value for name, value in theirs.items() if "_dn_" in name}

    criterion, weights = _criterion(config)
    predictions = {"logits": logits[-1], "pred_boxes": boxes[-1],
                   "auxiliary_outputs": [{"logits": logits[i], "pred_boxes": boxes[i]} for i in range(layers - 1)]}
    ours = denoising_losses(criterion, predictions, targets, dn.meta, max(sum(counts), 1))
    renamed = {name.replace("_dn", f"_dn_{layers - 1}") if name.endswith("_dn") else name: value for name, value in ours.items()}
    assert set(renamed) == set(their_dn)
    for name, value in their_dn.items():
        torch.testing.assert_close(weights[name.split("_dn_")[0]] * renamed[name], value)

    loss = group.loss(criterion, predictions, targets, dn.meta)
    assert set(loss.terms) == set(ours)
    torch.testing.assert_close(loss.total, sum(their_dn.values()))


def test_group_queries_equal_the_reference_and_its_switches():
    targets = make_targets((2, 5, 1))
    group = RTDetrDenoisingGroup(K, C, num_denoising=30, label_noise_ratio=0.5, box_noise_scale=0.4).train()
    assert group.name == "dn" and group.placement == "before" and group.sees_matching
    assert group.denoising_class_embed.padding_idx == K and group.denoising_class_embed.weight.shape == (K + 1, C)
    assert group.active(True, targets) and not group.active(False, targets) and not group.active(True, None)
    content, box_logits, attn_mask, _ = reference(targets, group.denoising_class_embed, 30, 0.5, 0.4, seed=2)
    torch.manual_seed(2)
    queries = group.queries(None, targets)
    assert torch.equal(queries.target, content)
    assert torch.equal(queries.reference_points, box_logits.sigmoid())
    assert queries.query_position is None
    pad = content.shape[1]
    assert torch.equal(queries.attention_block, attn_mask[:pad, :pad] == float("-inf"))
    assert group.queries(None, make_targets((0, 0))) is None

    off = RTDetrDenoisingGroup(K, C, num_denoising=0)
    assert not off.active(True, targets) and off.denoising_class_embed is None and not off.state_dict()


class _Holder(nn.Module):
    """Stands in for ``DeformableTransformerModel``'s storage: its groups' parameters at its level."""

    def __init__(self, groups):
        super().__init__()
        self.query_selection = nn.Identity()
        self.query_groups = nn.ModuleList(groups)
        self.register_state_dict_post_hook(_flatten_state_dict)
        self.register_load_state_dict_pre_hook(_nest_state_dict)


def test_embedding_is_stored_under_transformers_key():
    holder = _Holder([RTDetrDenoisingGroup(K, C)])
    state = holder.state_dict()
    assert list(state) == ["denoising_class_embed.weight"]
    fresh = _Holder([RTDetrDenoisingGroup(K, C)])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.query_groups[0].denoising_class_embed.weight, state["denoising_class_embed.weight"])


def test_errors_name_the_argument():
    targets = make_targets((2, 1))
    for kwargs, name in [({"num_labels": 0}, "num_labels"), ({"d_model": 0}, "d_model"), ({"num_denoising": -1}, "num_denoising"),
                         ({"label_noise_ratio": 1.5}, "label_noise_ratio"), ({"box_noise_scale": -0.1}, "box_noise_scale")]:
        with pytest.raises(ValueError, match=name):
            RTDetrDenoisingGroup(**{"num_labels": K, "d_model": C, **kwargs})
    with pytest.raises(ValueError, match="num_denoising"):
        padded_denoising_queries(targets, K, make_embedding(), Q, num_denoising=0)
    with pytest.raises(ValueError, match="targets"):
        padded_denoising_queries([], K, make_embedding(), Q)
    with pytest.raises(ValueError, match="class_labels"):
        padded_denoising_queries(targets, 1, make_embedding(), Q)
    with pytest.raises(ValueError, match="label_noise_ratio"):
        padded_denoising_queries(targets, K, make_embedding(), Q, label_noise_ratio=-0.5)
    with pytest.raises(ValueError, match="box_noise_scale"):
        padded_denoising_queries(targets, K, make_embedding(), Q, box_noise_scale=-1.0)
    with pytest.raises(ValueError, match="label_embedding"):
        padded_denoising_queries(targets, K, lambda labels: labels, Q)
    meta = padded_denoising_meta([2, 1], 100)
    noise = draw_padded_denoising_noise(2, meta, K, label_noise_ratio=0.5, box_noise_scale=1.0)
    with pytest.raises(ValueError, match="noise.box_sign"):
        padded_denoising_queries(targets, K, make_embedding(), Q, noise=noise._replace(box_sign=noise.box_sign[:, :3]))
    with pytest.raises(ValueError, match="noise.label_flip"):
        padded_denoising_queries(targets, K, make_embedding(), Q, noise=noise._replace(label_flip=None))
    with pytest.raises(TypeError, match="noise"):
        padded_denoising_queries(targets, K, make_embedding(), Q, noise=tuple(noise))
    with pytest.raises(ValueError, match="counts"):
        padded_denoising_meta([], 100)
