"""Two-stage proposals against transformers 4.57.6 and a direct computation; padding respected."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers.models.deformable_detr import modeling_deformable_detr as hf

from detr_blocks import box_sine_embedding, encoder_output_proposals, proposal_position_embedding, select_top_proposals

SHAPES = [(4, 5), (2, 3), (1, 2), (1, 1)]


def padded_mask():
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, 3:, :] = True
    masks[0][1, :, 4:] = True
    masks[1][1, :, 2:] = True
    return torch.cat([m.flatten(1) for m in masks], 1)


def hf_two_stage_helpers(d_model):
    """transformers' proposal methods, bound to a stand-in with identity output layers."""
    stand_in = SimpleNamespace(enc_output=nn.Identity(), enc_output_norm=nn.Identity(), config=SimpleNamespace(d_model=d_model))
    generate = lambda memory, mask, shapes: hf.DeformableDetrModel.gen_encoder_output_proposals(stand_in, memory, mask, shapes)
    embed = lambda logits: hf.DeformableDetrModel.get_proposal_pos_embed(stand_in, logits)
    return generate, embed


def test_proposals_match_transformers():
    torch.manual_seed(0)
    mask = padded_mask()
    memory = torch.randn(2, mask.shape[1], 8)
    generate, _ = hf_two_stage_helpers(8)
    expected_memory, expected = generate(memory, mask, SHAPES)
    ours_memory, ours = encoder_output_proposals(memory, mask, torch.tensor(SHAPES))
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_memory, expected_memory)


def test_proposals_by_hand_and_validity():
    mask = padded_mask()
    _, proposals = encoder_output_proposals(torch.zeros(2, mask.shape[1], 4, dtype=torch.float64), mask, SHAPES)
    start = 0
    for level, (h, w) in enumerate(SHAPES):
        size = 0.05 * 2**level
        for b in range(2):
            level_mask = mask[b, start : start + h * w].view(h, w)
            real_h, real_w = int((~level_mask[:, 0]).sum()), int((~level_mask[0]).sum())
            for i in range(h):
                for j in range(w):
                    box = [(j + 0.5) / real_w, (i + 0.5) / real_h, size, size]
                    got = proposals[b, start + i * w + j]
                    if level_mask[i, j] or not all(0.01 < v < 0.99 for v in box):
                        assert torch.isinf(got).all() and (got > 0).all()
                    else:
                        expected = torch.tensor([math.log(v / (1 - v)) for v in box], dtype=torch.float64)
                        torch.testing.assert_close(got, expected)
        start += h * w
    # level 3 boxes are 0.4 wide and 1x1 maps centre at 0.5, so they are valid; all padding is not
    assert torch.isinf(proposals[mask]).all()
    assert torch.isfinite(proposals[~mask]).any()


def test_padded_image_gets_the_proposals_of_its_unpadded_self():
    mask = padded_mask()
    _, proposals = encoder_output_proposals(torch.zeros(2, mask.shape[1], 4), mask, SHAPES)
    real_shapes = [(3, 4), (2, 2), (1, 2), (1, 1)]
    _, alone = encoder_output_proposals(torch.zeros(1, int((~mask[1]).sum()), 4), None, real_shapes)
    torch.testing.assert_close(proposals[1][~mask[1]], alone[0])


@pytest.mark.parametrize("d_model", [8, 32])
def test_proposal_position_embedding_matches_transformers(d_model):
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 4) * 3
    _, embed = hf_two_stage_helpers(2 * d_model)
    ours = box_sine_embedding(logits.sigmoid(), num_pos_feats=d_model, order="xy")
    assert ours.shape == (2, 6, 4 * d_model)
    torch.testing.assert_close(ours, embed(logits))
    with pytest.warns(DeprecationWarning, match="box_sine_embedding"):
        torch.testing.assert_close(proposal_position_embedding(logits, num_pos_feats=d_model), ours)


def test_proposal_position_embedding_by_hand():
    logits = torch.tensor([[[0.3, -1.0, 2.0, 0.0]]], dtype=torch.float64)
    out = box_sine_embedding(logits.sigmoid(), num_pos_feats=4, order="xy")
    expected = []
    for v in logits[0, 0].tolist():
        angle = 1 / (1 + math.exp(-v)) * 2 * math.pi
        for c in range(4):
            freq = 10000 ** (2 * (c // 2) / 4)
            expected.append(math.sin(angle / freq) if c % 2 == 0 else math.cos(angle / freq))
    torch.testing.assert_close(out[0, 0], torch.tensor(expected, dtype=torch.float64))


def test_select_top_proposals():
    torch.manual_seed(2)
    class_logits = torch.randn(2, 10, 3, requires_grad=True)
    coord_logits = torch.randn(2, 10, 4, requires_grad=True)
    top, indices = select_top_proposals(class_logits, coord_logits, 4)
    assert top.shape == (2, 4, 4) and indices.shape == (2, 4)
    assert not top.requires_grad
    for b in range(2):
        order = sorted(range(10), key=lambda i: -class_logits[b, i, 0].item())[:4]
        assert indices[b].tolist() == order
        torch.testing.assert_close(top[b], coord_logits[b, order].detach())
    with pytest.raises(ValueError, match="k must"):
        select_top_proposals(class_logits, coord_logits, 11)
    with pytest.raises(ValueError, match="coord_logits"):
        select_top_proposals(class_logits, coord_logits[..., :2], 2)


def test_proposal_errors():
    with pytest.raises(ValueError, match="spatial_shapes"):
        encoder_output_proposals(torch.zeros(1, 7, 4), None, SHAPES)
    with pytest.raises(ValueError, match="padding_mask"):
        encoder_output_proposals(torch.zeros(1, 29, 4), torch.zeros(1, 29), SHAPES)


@pytest.mark.parametrize("scoring", ["first_class", "max_class", lambda logits: logits[..., 1] - logits[..., 2]])
def test_select_top_proposals_scorings_brute_force(scoring):
    generator = torch.Generator().manual_seed(3)
    class_logits, coord_logits = torch.randn(3, 12, 4, generator=generator), torch.randn(3, 12, 4, generator=generator)
    top, indices = select_top_proposals(class_logits, coord_logits, 5, scoring=scoring)
    for b in range(3):
        rows = class_logits[b].tolist()
        if scoring == "first_class":
            scores = [row[0] for row in rows]
        elif scoring == "max_class":
            scores = [max(row) for row in rows]
        else:
            scores = [row[1] - row[2] for row in rows]
        order = sorted(range(12), key=lambda i: -scores[i])[:5]
        assert indices[b].tolist() == order
        torch.testing.assert_close(top[b], coord_logits[b, order])
    default_top, _ = select_top_proposals(class_logits, coord_logits, 5)
    if scoring == "first_class":
        torch.testing.assert_close(default_top, top)
    with pytest.raises(ValueError, match="scoring"):
        select_top_proposals(class_logits, coord_logits, 5, scoring="mean")
