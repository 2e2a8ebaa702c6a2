"""Contrastive denoising: group rule, noise by hand from the same random draws, the attention mask
by brute force and through a real decoder (perturbation and gradients), matching and losses."""

import math

import pytest
import torch
from torch import nn

from detr_blocks import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DenoisingMeta,
    SetCriterion,
    contrastive_denoising_queries,
    denoising_attention_mask,
    denoising_group_count,
    denoising_losses,
    denoising_matching_indices,
    split_denoising_outputs,
)

K, C = 5, 16


def make_targets(sizes=(2, 0, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {"class_labels": torch.randint(0, K, (n,), generator=generator), "boxes": torch.rand(n, 4, generator=generator) * 0.4 + 0.3}
        for n in sizes
    ]


@pytest.mark.parametrize("max_targets,dn_number,groups", [(0, 100, 1), (3, 100, 33), (5, 50, 10), (200, 100, 1), (3, 10, 20), (1, 49, 98), (4, 60, 15)])
def test_group_count_rule(max_targets, dn_number, groups):
    assert denoising_group_count(max_targets, dn_number) == groups


@pytest.mark.parametrize("label_noise_ratio,box_noise_scale", [(0.5, 0.4), (1.0, 1.0), (0.0, 0.0)])
def test_queries_by_hand_from_the_same_draws(label_noise_ratio, box_noise_scale):
    targets, embedding = make_targets(), nn.Embedding(K + 1, C)
    torch.manual_seed(7)
    dn = contrastive_denoising_queries(targets, K, embedding, 4, dn_number=10, label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)
    groups, max_t = 20, 3  # 2·dn_number groups below 50 (the original rule)
    assert dn.meta == DenoisingMeta(pad_size=2 * max_t * groups, num_dn_group=groups)
    assert dn.content.shape == (3, 120, C) and dn.box_logits.shape == (3, 120, 4) and dn.attn_mask.shape == (124, 124)
    # redraw what the function drew, in its order: label coins, new labels, signs, magnitudes
    torch.manual_seed(7)
    copies = 2 * groups
    entries = [(c, b, j) for c in range(copies) for b, t in enumerate(targets) for j in range(len(t["class_labels"]))]
    labels = [int(targets[b]["class_labels"][j]) for _, b, j in entries]
    if label_noise_ratio > 0:
        coins = torch.rand(len(entries))
        flipped = [i for i in range(len(entries)) if coins[i] < label_noise_ratio / 2]
        for i, new in zip(flipped, torch.randint(0, K, (len(flipped),)).tolist()):
            labels[i] = new
    if box_noise_scale > 0:
        signs = torch.randint(0, 2, (len(entries), 4), dtype=torch.float32) * 2 - 1
        magnitudes = torch.rand(len(entries), 4)
    expected_content = torch.zeros(3, 120, C)
    expected_logits = torch.zeros(3, 120, 4)
    for i, (c, b, j) in enumerate(entries):
        cx, cy, w, h = targets[b]["boxes"][j].tolist()
        box = [cx, cy, w, h]
        if box_noise_scale > 0:
            corners = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            half = [w / 2, h / 2, w / 2, h / 2]
            for k in range(4):
                u = magnitudes[i, k].item() + (1.0 if c % 2 else 0.0)  # odd copies are the negatives
                corners[k] = min(max(corners[k] + signs[i, k].item() * u * half[k] * box_noise_scale, 0.0), 1.0)
            box = [(corners[0] + corners[2]) / 2, (corners[1] + corners[3]) / 2, corners[2] - corners[0], corners[3] - corners[1]]
        slot = c * max_t + j
        expected_content[b, slot] = embedding.weight[labels[i]]
        expected_logits[b, slot] = torch.tensor([math.log(max(v, 1e-3) / max(1 - v, 1e-3)) for v in (min(max(v, 0.0), 1.0) for v in box)])  # DINO's clamps
    torch.testing.assert_close(dn.content, expected_content)
    torch.testing.assert_close(dn.box_logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_attention_mask_by_brute_force():
    meta, queries = DenoisingMeta(pad_size=12, num_dn_group=3), 5
    mask = denoising_attention_mask(meta, queries)
    for i in range(17):
        for j in range(17):
            if i >= 12:
                blocked = j < 12  # matching queries never see denoising ones
            else:
                blocked = j < 12 and i // 4 != j // 4  # a group sees itself and the matching queries
            assert mask[i, j].item() == blocked, (i, j)


def decoder_inputs(num_queries=4):
    torch.manual_seed(3)
    targets = make_targets()
    dn = contrastive_denoising_queries(targets, K, nn.Embedding(K + 1, C), num_queries, dn_number=4)
    content = torch.cat([dn.content, torch.randn(3, num_queries, C)], 1)
    reference = torch.cat([dn.box_logits, torch.randn(3, num_queries, 4)], 1).sigmoid()
    memory = torch.randn(3, 12, C)
    spatial, start = torch.tensor([[3, 4]]), torch.tensor([0])
    return dn, content, reference, memory, spatial, start


def test_no_information_flows_from_denoising_to_matching_queries_nor_between_groups():
    dn, content, reference, memory, spatial, start = decoder_inputs()
    pad, size = dn.meta.pad_size, dn.meta.group_size
    torch.manual_seed(0)
    decoder = DeformableDecoder([DeformableDecoderLayer(C, 32, num_heads=2, num_levels=1, num_points=2) for _ in range(2)]).eval()
    run = lambda x, mask=dn.attn_mask: decoder(x, reference, memory, spatial, start, self_attn_mask=mask).last_hidden_state
    base = run(content)
    perturbed = content.clone()
    perturbed[:, :size] += torch.randn(3, size, C)  # group 0 only
    out = run(perturbed)
    torch.testing.assert_close(out[:, pad:], base[:, pad:], rtol=0, atol=1e-6)  # matching queries
    torch.testing.assert_close(out[:, size:pad], base[:, size:pad], rtol=0, atol=1e-6)  # other groups
    assert not torch.allclose(out[:, :size], base[:, :size])
    # without the mask the perturbation reaches the matching queries (the test can fail)
    assert not torch.allclose(run(perturbed, None)[:, pad:], run(content, None)[:, pad:])
    # gradients: the matching outputs do not depend on any denoising query
    content = content.detach().clone().requires_grad_()
    run(content)[:, pad:].sum().backward()
    assert content.grad[:, :pad].abs().max() == 0 and content.grad[:, pad:].abs().max() > 0


def test_positive_queries_reconstruct_targets_and_matching_indices():
    targets = make_targets()
    dn = contrastive_denoising_queries(targets, K, nn.Embedding(K + 1, C), 4, dn_number=100, label_noise_ratio=0.0, box_noise_scale=0.0)
    assert dn.meta == DenoisingMeta(pad_size=2 * 3 * 33, num_dn_group=33)
    indices = denoising_matching_indices(targets, dn.meta)
    for b, (target, (queries, target_index)) in enumerate(zip(targets, indices)):
        n = len(target["class_labels"])
        assert queries.tolist() == [g * 6 + j for g in range(33) for j in range(n)]
        assert target_index.tolist() == list(range(n)) * 33
        torch.testing.assert_close(dn.box_logits[b, queries].sigmoid(), target["boxes"][target_index], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dn.box_logits[b, queries + 3], dn.box_logits[b, queries])  # the negatives, noiseless here


def test_split_and_losses():
    targets = make_targets()
    dn = contrastive_denoising_queries(targets, K, nn.Embedding(K + 1, C), 4, dn_number=4)
    logits, boxes = torch.randn(2, 3, dn.meta.pad_size + 4, K), torch.rand(2, 3, dn.meta.pad_size + 4, 4)
    dn_logits, matching_logits = split_denoising_outputs(logits, dn.meta, dim=2)
    dn_boxes, _ = split_denoising_outputs(boxes, dn.meta, dim=2)
    assert dn_logits.shape[2] == dn.meta.pad_size and matching_logits.shape[2] == 4
    assert split_denoising_outputs(logits, None, dim=2) == (None, logits)
    criterion = SetCriterion(K)
    outputs = {"logits": dn_logits[-1], "pred_boxes": dn_boxes[-1], "auxiliary_outputs": [{"logits": dn_logits[0], "pred_boxes": dn_boxes[0]}]}
    losses = denoising_losses(criterion, outputs, targets, dn.meta, num_boxes=5.0)
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "cardinality_error_dn_0"} <= set(losses)
    indices = denoising_matching_indices(targets, dn.meta)
    l1 = sum((dn_boxes[-1][b, q] - t["boxes"][j]).abs().sum() for b, (t, (q, j)) in enumerate(zip(targets, indices)))
    torch.testing.assert_close(losses["loss_bbox_dn"], l1 / (5.0 * dn.meta.num_dn_group))
    total = criterion.weighted_total(losses, logits)  # every dn term is weighted or logged
    assert torch.isfinite(total)


def test_no_targets_and_errors():
    empty = [{"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    dn = contrastive_denoising_queries(empty, K, nn.Embedding(K + 1, C), 3)
    assert dn.meta == DenoisingMeta(0, 1) and dn.content.shape == (2, 0, C) and not dn.attn_mask.any()
    with pytest.raises(ValueError, match="dn_number"):
        contrastive_denoising_queries(make_targets(), K, nn.Embedding(K + 1, C), 3, dn_number=0)
    with pytest.raises(ValueError, match="targets"):
        contrastive_denoising_queries([], K, nn.Embedding(K + 1, C), 3)
    with pytest.raises(ValueError, match="class_labels"):
        contrastive_denoising_queries(make_targets(), 2, nn.Embedding(K + 1, C), 3)
    with pytest.raises(ValueError, match="label_noise_ratio"):
        contrastive_denoising_queries(make_targets(), K, nn.Embedding(K + 1, C), 3, label_noise_ratio=1.5)
