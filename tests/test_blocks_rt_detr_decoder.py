"""RT-DETR's decoder is our ``DeformableDecoder`` with two policies — ``LookForwardTwice``
refinement and ``BoxMLPQueryPosition`` — and ``DeformableDecoderLayer``s: equal to ``transformers``'
``RTDetrDecoder`` (4.57.6) with the same weights, a denoising-style self-attention mask included."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RTDetrConfig
from transformers.models.rt_detr import modeling_rt_detr as hf

from detr_blocks import MLP, BoxMLPQueryPosition, DeformableDecoder, DeformableDecoderLayer, LookForwardTwice

D, HEADS, CLASSES = 16, 2, 3
SHAPES = [(6, 5), (3, 3), (2, 2)]


def _pair(layers: int, points: int, activation: str):
    config = RTDetrConfig(d_model=D, decoder_attention_heads=HEADS, decoder_ffn_dim=20, decoder_layers=layers, decoder_n_points=points,
                          num_feature_levels=len(SHAPES), decoder_activation_function=activation)
    theirs = hf.RTDetrDecoder(config)
    theirs.bbox_embed = nn.ModuleList(hf.RTDetrMLPPredictionHead(config, D, D, 4, num_layers=3) for _ in range(layers))
    theirs.class_embed = nn.ModuleList(nn.Linear(D, CLASSES) for _ in range(layers))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    ours = DeformableDecoder(
        [DeformableDecoderLayer(D, 20, num_heads=HEADS, num_levels=len(SHAPES), num_points=points, dropout=0.0, activation=activation)
         for _ in range(layers)],
        bbox_embed=nn.ModuleList(MLP(D, D, 4, 3) for _ in range(layers)),
        class_embed=nn.ModuleList(nn.Linear(D, CLASSES) for _ in range(layers)),
        refinement=LookForwardTwice(eps=1e-5),
        query_position=BoxMLPQueryPosition(D),
    )
    renamed = {key.replace("query_pos_head.", "query_position.mlp."): value for key, value in theirs.state_dict().items()}
    ours.load_state_dict(renamed)  # strict
    return theirs.eval(), ours.eval()


@pytest.mark.parametrize(("layers", "points", "activation", "masked"), [(2, 2, "relu", False), (3, 3, "gelu", True)])
def test_decoder_with_rt_detr_policies_matches_transformers(layers, points, activation, masked):
    theirs, ours = _pair(layers, points, activation)
    torch.manual_seed(1)
    spatial = torch.tensor(SHAPES)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    memory = torch.randn(2, int(spatial.prod(1).sum()), D)
    queries = 6
    target = torch.randn(2, queries, D)
    reference_logits = torch.randn(2, queries, 4)
    mask = None
    if masked:  # two groups that may not see each other, as denoising queries and matching queries
        mask = torch.zeros(queries, queries, dtype=torch.bool)
        mask[:2, 2:] = True
        mask[2:, :2] = True
    expected = theirs(inputs_embeds=target, encoder_hidden_states=memory, encoder_attention_mask=mask, reference_points=reference_logits,
                      spatial_shapes=spatial, spatial_shapes_list=SHAPES, level_start_index=start)
    out = ours(target, reference_logits.sigmoid(), memory, spatial, start, self_attn_mask=mask)
    torch.testing.assert_close(out.intermediate_hidden_states, expected.intermediate_hidden_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.intermediate_reference_points, expected.intermediate_reference_points, rtol=1e-5, atol=1e-5)
    logits = torch.stack([head(out.intermediate_hidden_states[:, i]) for i, head in enumerate(ours.class_embed)], 1)
    torch.testing.assert_close(logits, expected.intermediate_logits, rtol=1e-5, atol=1e-5)


def test_box_mlp_query_position_checks_its_input():
    policy = BoxMLPQueryPosition(8)
    assert policy(0, None, torch.rand(2, 5, 3, 4), None).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="reference_points"):
        policy(0, None, torch.rand(2, 5, 3, 2), None)
    with pytest.raises(ValueError, match="hidden_dim"):
        BoxMLPQueryPosition(8, hidden_dim=0)
