"""MLP, inverse_sigmoid, refine_boxes, activations, valid ratios and the decoder self-attention."""

import math

import pytest
import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.deformable_detr import modeling_deformable_detr as hf

from detr_blocks import MLP, MultiheadSelfAttention, get_activation, inverse_sigmoid, refine_boxes, valid_ratios


@pytest.mark.parametrize("num_layers", [1, 3])
def test_mlp_matches_transformers_head(num_layers):
    torch.manual_seed(0)
    theirs = hf.DeformableDetrMLPPredictionHead(8, 16, 4, num_layers)
    ours = MLP(8, 16, 4, num_layers)
    ours.load_state_dict(theirs.state_dict())  # same names: layers.{i}
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_mlp_errors():
    with pytest.raises(ValueError, match="num_layers"):
        MLP(2, 2, 2, 0)


def test_inverse_sigmoid_formula_and_clamping():
    x = torch.tensor([0.0, 1e-7, 0.3, 0.5, 0.9, 1.0, 1.5, -0.2], dtype=torch.float64)
    expected = []
    for v in x.tolist():
        v = min(max(v, 0.0), 1.0)
        expected.append(math.log(max(v, 1e-5) / max(1 - v, 1e-5)))
    torch.testing.assert_close(inverse_sigmoid(x), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(inverse_sigmoid(x), hf.inverse_sigmoid(x))
    inner = torch.rand(50, dtype=torch.float64) * 0.98 + 0.01
    torch.testing.assert_close(inverse_sigmoid(inner).sigmoid(), inner)


def test_refine_boxes_points_and_boxes():
    delta = torch.randn(2, 3, 4, dtype=torch.float64)
    boxes = torch.rand(2, 3, 4, dtype=torch.float64) * 0.8 + 0.1
    points = boxes[..., :2]
    torch.testing.assert_close(refine_boxes(delta, boxes), torch.sigmoid(delta + torch.logit(boxes)))
    from_points = refine_boxes(delta, points)
    torch.testing.assert_close(from_points[..., :2], torch.sigmoid(delta[..., :2] + torch.logit(points)))
    torch.testing.assert_close(from_points[..., 2:], torch.sigmoid(delta[..., 2:]))
    with pytest.raises(ValueError, match="reference"):
        refine_boxes(delta, boxes[..., :3])


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_new", "silu", "swish"])
def test_activations_match_transformers(name):
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(get_activation(name)(x), ACT2FN[name](x))


def test_activation_errors_and_callables():
    assert get_activation(torch.tanh) is torch.tanh
    with pytest.raises(ValueError, match="activation"):
        get_activation("nope")


def test_valid_ratios():
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[0, :3, :5] = False
    mask[1, :4, :2] = False
    torch.testing.assert_close(valid_ratios(mask), torch.tensor([[1.0, 0.75], [0.4, 1.0]]))
    with pytest.raises(ValueError, match="mask"):
        valid_ratios(mask.float())


@pytest.mark.parametrize("with_pos", [True, False])
def test_self_attention_matches_transformers_and_torch(with_pos):
    torch.manual_seed(1)
    ours = MultiheadSelfAttention(16, 4)
    theirs = hf.DeformableDetrMultiheadAttention(16, 4)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    for p in theirs.parameters():
        nn.init.normal_(p, std=0.3)
    ours.load_state_dict(theirs.state_dict())
    x, pos = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    pos = pos if with_pos else None
    if with_pos:
        expected = theirs(x, position_embeddings=pos)[0]
    else:
        # transformers' layer needs position embeddings; zeros are the same thing
        expected = theirs(x, position_embeddings=torch.zeros_like(x))[0]
    torch.testing.assert_close(ours(x, pos), expected)

    # the paper's nn.MultiheadAttention(q = k = x + pos, v = x) with the stacked in_proj
    torch_mha = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        torch_mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        torch_mha.out_proj.load_state_dict(ours.out_proj.state_dict())
    qk = x if pos is None else x + pos
    torch.testing.assert_close(ours(x, pos), torch_mha(qk, qk, x)[0])


def test_self_attention_masks():
    torch.manual_seed(2)
    attn = MultiheadSelfAttention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    key_padding = torch.tensor([[False, False, False, True, True]])
    masked = attn(x, attention_mask=key_padding)
    # masking keys 3, 4 equals running on the first three queries only (for those queries)
    torch.testing.assert_close(masked[:, :3], attn(x[:, :3]))
    square = key_padding.expand(5, 5)
    torch.testing.assert_close(attn(x, attention_mask=square), masked)
    with pytest.raises(ValueError, match="attention_mask"):
        attn(x, attention_mask=key_padding.float())
    with pytest.raises(ValueError, match="attention_mask"):
        attn(x, attention_mask=torch.zeros(2, 3, dtype=torch.bool))
