"""Position embeddings against a direct fp64 computation and transformers 4.57.6; padding respected."""

import math

import pytest
import torch
from transformers.models.deformable_detr import modeling_deformable_detr as hf

from detr_blocks import LearnedPositionEmbedding, SinePositionEmbedding


def padded_mask(batch_sizes, height, width):
    mask = torch.ones(len(batch_sizes), height, width, dtype=torch.bool)
    for index, (h, w) in enumerate(batch_sizes):
        mask[index, :h, :w] = False
    return mask


def sine_by_hand(h_real, w_real, feats, temperature=10000.0):
    """Embedding of the real pixels of one unpadded h×w image from the formula, fp64, pixel by pixel."""
    out = torch.zeros(2 * feats, h_real, w_real, dtype=torch.float64)
    for i in range(h_real):
        for j in range(w_real):
            y = (i + 1 - 0.5) / (h_real + 1e-6) * 2 * math.pi
            x = (j + 1 - 0.5) / (w_real + 1e-6) * 2 * math.pi
            for c in range(feats):
                freq = temperature ** (2 * (c // 2) / feats)
                fn = math.sin if c % 2 == 0 else math.cos
                out[c, i, j] = fn(y / freq)
                out[feats + c, i, j] = fn(x / freq)
    return out


@pytest.mark.parametrize("feats", [4, 8])
def test_sine_matches_formula_and_ignores_padding(feats):
    sizes = [(5, 3), (2, 6)]
    mask = padded_mask(sizes, 5, 6)
    pos = SinePositionEmbedding(feats)(mask, dtype=torch.float64)
    assert pos.shape == (2, 2 * feats, 5, 6)
    for index, (h, w) in enumerate(sizes):
        torch.testing.assert_close(pos[index, :, :h, :w], sine_by_hand(h, w, feats), rtol=0, atol=1e-12)
        # the unpadded image alone gives the same values on its real pixels
        alone = SinePositionEmbedding(feats)(torch.zeros(1, h, w, dtype=torch.bool), dtype=torch.float64)
        torch.testing.assert_close(pos[index, :, :h, :w], alone[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("feats,normalize", [(16, True), (8, False)])
def test_sine_matches_transformers(feats, normalize):
    mask = padded_mask([(7, 4), (3, 9), (7, 9)], 7, 9)
    ours = SinePositionEmbedding(feats, normalize=normalize)(mask)
    theirs = hf.DeformableDetrSinePositionEmbedding(feats, normalize=normalize)(torch.zeros(3, 1, 7, 9), (~mask).long())
    torch.testing.assert_close(ours, theirs)


def test_learned_matches_transformers_with_copied_weights():
    feats = 6
    theirs = hf.DeformableDetrLearnedPositionEmbedding(feats)
    ours = LearnedPositionEmbedding(feats)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    mask = padded_mask([(4, 5), (2, 2)], 4, 5)
    torch.testing.assert_close(ours(mask), theirs(torch.zeros(2, 1, 4, 5), (~mask).long()))


def test_learned_is_absolute_so_padding_keeps_real_values():
    emb = LearnedPositionEmbedding(3)
    padded = emb(padded_mask([(2, 3)], 6, 7))
    alone = emb(torch.zeros(1, 2, 3, dtype=torch.bool))
    torch.testing.assert_close(padded[:, :, :2, :3], alone)
    x_part, y_part = padded[0, :3], padded[0, 3:]
    torch.testing.assert_close(x_part[:, 4, 5], emb.column_embeddings.weight[5])
    torch.testing.assert_close(y_part[:, 4, 5], emb.row_embeddings.weight[4])


def test_sine_dtype_and_errors():
    emb = SinePositionEmbedding(4)
    assert emb(torch.zeros(1, 2, 2, dtype=torch.bool), dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="mask"):
        emb(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        emb(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_pos_feats"):
        SinePositionEmbedding(5)
    with pytest.raises(ValueError, match="scale"):
        SinePositionEmbedding(4, normalize=False, scale=1.0)
    with pytest.raises(ValueError, match="max_size"):
        LearnedPositionEmbedding(4, max_size=8)(torch.zeros(1, 9, 2, dtype=torch.bool))
