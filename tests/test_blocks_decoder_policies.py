"""Decoder policies: defaults equal the old loop written out here; look-forward-twice gradients;
conditional query positions against a by-hand sine embedding; the intermediate norm."""

import math

import pytest
import torch
from torch import nn

from detr_blocks import (
    MLP,
    BoxQueryPosition,
    DeformableDecoder,
    DeformableDecoderLayer,
    DetachedRefinement,
    InputQueryPosition,
    LookForwardTwice,
    NoRefinement,
    box_sine_embedding,
    valid_ratios,
)

D, HEADS, SHAPES = 16, 2, [(6, 5), (3, 3)]


class Recording(nn.Module):
    """Wraps a decoder layer and records what it is called with."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.calls = layer, []

    def forward(self, hidden, ref, memory, spatial, start, pos, mask, attn_mask):
        self.calls.append((ref, pos))
        return self.layer(hidden, ref, memory, spatial, start, pos, mask, attn_mask)


def inputs(seed=0, ref_dim=4):
    torch.manual_seed(seed)
    spatial = torch.tensor(SHAPES)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, 4:, :] = True
    masks[1][1, :, 2:] = True
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    ratios = torch.stack([valid_ratios(m) for m in masks], 1)
    memory = torch.randn(2, mask.shape[1], D)
    query, query_pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    ref = torch.rand(2, 5, ref_dim) * 0.8 + 0.1
    return query, ref, memory, spatial, start, ratios, query_pos, mask


def make_layers(n=3):
    return [DeformableDecoderLayer(D, 20, num_heads=HEADS, num_levels=2, num_points=2) for _ in range(n)]


def heads(n=3):
    return nn.ModuleList(MLP(D, D, 4, 3) for _ in range(n))


def old_loop(layers, bbox_embed, query, ref, memory, spatial, start, ratios, query_pos, mask):
    """The decoder as it was: fixed query positions, refine-then-detach when heads are given."""
    hidden, states, points = query, [], []
    for index, layer in enumerate(layers):
        scale = ratios if ref.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
        hidden = layer(hidden, ref[:, :, None] * scale[:, None], memory, spatial, start, query_pos, mask, None)
        if bbox_embed is not None:
            delta = bbox_embed[index](hidden)
            logit = torch.log(ref.clamp(1e-5, 1) / (1 - ref).clamp(1e-5, 1))
            if ref.shape[-1] == 2:
                ref = torch.cat([delta[..., :2] + logit, delta[..., 2:]], -1).sigmoid().detach()
            else:
                ref = (delta + logit).sigmoid().detach()
        states.append(hidden)
        points.append(ref)
    return torch.stack(states, 1), torch.stack(points, 1)


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("ref_dim", [2, 4])
@pytest.mark.parametrize("explicit", [False, True])
def test_default_policies_equal_the_old_loop(refine, ref_dim, explicit):
    torch.manual_seed(1)
    layers, bbox_embed = make_layers(), heads() if refine else None
    policies = {}
    if explicit:
        policies = dict(refinement=DetachedRefinement() if refine else NoRefinement(), query_position=InputQueryPosition(), intermediate_norm=nn.Identity())
    decoder = DeformableDecoder(layers, bbox_embed, **policies).eval()
    args = inputs(ref_dim=ref_dim)
    out = decoder(*args)
    states, points = old_loop(decoder.layers, bbox_embed, *args)
    torch.testing.assert_close(out.intermediate_hidden_states, states, rtol=0, atol=0)
    torch.testing.assert_close(out.intermediate_reference_points, points, rtol=0, atol=0)
    torch.testing.assert_close(out.last_hidden_state, states[:, -1], rtol=0, atol=0)
    # the default policies hold no parameters: checkpoint keys are those of layers and heads only
    assert all(k.startswith(("layers.", "bbox_embed.")) for k in decoder.state_dict())


def test_look_forward_twice_records_undetached_and_feeds_detached():
    torch.manual_seed(2)
    layers = [Recording(layer) for layer in make_layers()]
    decoder = DeformableDecoder(layers, heads(), refinement=LookForwardTwice())
    out = decoder(*inputs())
    recorded = out.intermediate_reference_points
    assert recorded.requires_grad and recorded.grad_fn is not None
    # every layer after the first got detached references (the first got the input ones)
    for layer in layers[1:]:
        ref, _ = layer.calls[0]
        assert not ref.requires_grad and ref.grad_fn is None
    # same values as the detached policy, on the same modules
    detached = DeformableDecoder([layer.layer for layer in layers], decoder.bbox_embed, refinement=DetachedRefinement())
    torch.testing.assert_close(detached(*inputs()).intermediate_reference_points, recorded.detach())


@pytest.mark.parametrize("policy,reaches", [(LookForwardTwice(), True), (DetachedRefinement(), False)])
def test_next_layer_prediction_trains_previous_box_head_only_when_looking_forward_twice(policy, reaches):
    torch.manual_seed(3)
    decoder = DeformableDecoder(make_layers(2), heads(2), refinement=policy)
    out = decoder(*inputs())
    # the prediction of layer 1 is made against the reference recorded after layer 0
    prediction = (decoder.bbox_embed[1](out.intermediate_hidden_states[:, 1]) + torch.logit(out.intermediate_reference_points[:, 0], 1e-5)).sigmoid()
    prediction.sum().backward()
    grad = decoder.bbox_embed[0].layers[-1].weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == reaches


def sine_by_hand(values, feats, temperature=10000.0):
    out = []
    for v in values:
        for c in range(feats):
            angle = v * 2 * math.pi / temperature ** (2 * (c // 2) / feats)
            out.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
    return out


@pytest.mark.parametrize("dim", [2, 4])
def test_box_sine_embedding_by_hand(dim):
    box = torch.tensor([0.3, 0.6, 0.2, 0.9][:dim], dtype=torch.float64)
    order = [1, 0] if dim == 2 else [1, 0, 2, 3]  # (y, x[, w, h])
    expected = torch.tensor(sine_by_hand([box[i].item() for i in order], 8), dtype=torch.float64)
    torch.testing.assert_close(box_sine_embedding(box[None], num_pos_feats=8)[0], expected)
    with pytest.raises(ValueError, match="boxes"):
        box_sine_embedding(torch.zeros(3, 3))


def test_conditional_query_positions_from_current_boxes():
    torch.manual_seed(4)
    layers = [Recording(layer) for layer in make_layers()]
    query_position = BoxQueryPosition(D)
    decoder = DeformableDecoder(layers, heads(), refinement=LookForwardTwice(), query_position=query_position)
    query, ref, memory, spatial, start, ratios, query_pos, mask = inputs()
    out = decoder(query, ref, memory, spatial, start, ratios, None, mask)
    references = [ref] + list(out.intermediate_reference_points.detach().unbind(1))
    for index, layer in enumerate(layers):
        level_points, position = layer.calls[0]
        level0 = references[index] * torch.cat([ratios[:, 0], ratios[:, 0]], -1)[:, None]  # scaled by level 0's ratios
        torch.testing.assert_close(level_points[:, :, 0], level0)
        sine = torch.tensor([sine_by_hand([q[1], q[0], q[2], q[3]], D // 2) for q in level0.reshape(-1, 4).tolist()]).view(2, 5, 2 * D)
        torch.testing.assert_close(position, query_position.mlp(sine), rtol=1e-4, atol=1e-5)
    assert {"query_position.mlp.layers.0.weight", "query_position.mlp.layers.1.weight"} <= set(decoder.state_dict())
    assert query_position.mlp.layers[0].in_features == 2 * D


def test_intermediate_norm_applies_to_returned_states_not_to_refinement():
    torch.manual_seed(5)
    layers = [Recording(layer) for layer in make_layers(2)]
    norm = nn.LayerNorm(D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    decoder = DeformableDecoder(layers, heads(2), refinement=LookForwardTwice(), intermediate_norm=norm)
    query, ref, *rest = inputs()
    out = decoder(query, ref, *rest, output_hidden_states=True)
    raw = out.hidden_states[1:]
    for index in range(2):
        torch.testing.assert_close(out.intermediate_hidden_states[:, index], norm(raw[index]))
    expected_ref = (decoder.bbox_embed[0](raw[0]) + torch.logit(ref, 1e-5)).sigmoid()
    torch.testing.assert_close(out.intermediate_reference_points[:, 0], expected_ref)
    torch.testing.assert_close(out.last_hidden_state, norm(raw[-1]))
    assert "intermediate_norm.weight" in decoder.state_dict()


def test_policy_errors_name_the_argument():
    with pytest.raises(ValueError, match="bbox_embed"):
        DeformableDecoder(make_layers(1), refinement=LookForwardTwice())
    with pytest.raises(TypeError, match="query_position"):
        DeformableDecoder(make_layers(1), query_position=lambda *a: None)
    with pytest.raises(ValueError, match="eps"):
        LookForwardTwice(eps=0.0)
    decoder = DeformableDecoder(make_layers(1), query_position=BoxQueryPosition(D))
    with pytest.raises(ValueError, match="reference_points"):
        decoder(*inputs(ref_dim=2))
