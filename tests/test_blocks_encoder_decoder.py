"""Deformable encoder/decoder: transformers 4.57.6 with copied weights, padding, refinement, gradients."""

import pytest
import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr import modeling_deformable_detr as hf

from detr_blocks import (
    MLP,
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    encoder_reference_points,
    refine_boxes,
    valid_ratios,
)
from msda import MultiScaleDeformableAttention

D, HEADS = 16, 2


def level_index(shapes):
    spatial = torch.tensor(shapes, dtype=torch.int64)
    return spatial, torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])


def hf_config(levels=2, enc_points=3, dec_points=2, layers=2, activation="relu"):
    return DeformableDetrConfig(
        d_model=D,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        num_feature_levels=levels,
        encoder_n_points=enc_points,
        decoder_n_points=dec_points,
        encoder_ffn_dim=24,
        decoder_ffn_dim=20,
        encoder_layers=layers,
        decoder_layers=layers,
        activation_function=activation,
    )


def randomize(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def our_encoder(layers=2, levels=2, points=3, activation="relu"):
    return DeformableEncoder(
        [DeformableEncoderLayer(D, 24, num_heads=HEADS, num_levels=levels, num_points=points, activation=activation) for _ in range(layers)]
    )


def our_decoder(layers=2, levels=2, points=2, refine=False, activation="relu"):
    bbox_embed = nn.ModuleList(MLP(D, D, 4, 3) for _ in range(layers)) if refine else None
    return DeformableDecoder(
        [DeformableDecoderLayer(D, 20, num_heads=HEADS, num_levels=levels, num_points=points, activation=activation) for _ in range(layers)],
        bbox_embed=bbox_embed,
    )


SHAPES = [(6, 5), (3, 3)]


def padded_inputs(seed=0, batch=2):
    torch.manual_seed(seed)
    spatial, start = level_index(SHAPES)
    length = sum(h * w for h, w in SHAPES)
    memory = torch.randn(batch, length, D)
    pos = torch.randn(batch, length, D)
    masks = [torch.zeros(batch, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, 4:, :] = True
    masks[0][1, :, 3:] = True
    masks[1][1, 2:, :] = True
    masks[1][1, :, 2:] = True
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    ratios = torch.stack([valid_ratios(m) for m in masks], 1)
    return memory, pos, mask, ratios, spatial, start


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_transformers(activation):
    config = hf_config(activation=activation)
    theirs = randomize(hf.DeformableDetrEncoderLayer(config), 1).eval()
    ours = DeformableEncoderLayer(D, 24, num_heads=HEADS, num_levels=2, num_points=3, activation=activation).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    ref = encoder_reference_points(spatial, ratios)
    expected = theirs(
        memory, ~mask, position_embeddings=pos, reference_points=ref, spatial_shapes=spatial, spatial_shapes_list=SHAPES, level_start_index=start
    )[0]
    torch.testing.assert_close(ours(memory, ref, spatial, start, pos, mask), expected)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_decoder_layer_matches_transformers(ref_dim):
    config = hf_config()
    theirs = randomize(hf.DeformableDetrDecoderLayer(config), 2).eval()
    ours = DeformableDecoderLayer(D, 20, num_heads=HEADS, num_levels=2, num_points=2).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    memory, _, mask, _, spatial, start = padded_inputs()
    query, query_pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    ref = torch.rand(2, 5, 2, ref_dim)
    expected = theirs(query, query_pos, ref, spatial, SHAPES, start, memory, ~mask)[0]
    torch.testing.assert_close(ours(query, ref, memory, spatial, start, query_pos, mask), expected)


def test_encoder_stack_and_reference_points_match_transformers():
    config = hf_config()
    theirs = hf.DeformableDetrEncoder(config)
    randomize(theirs, 3).eval()
    ours = our_encoder().eval()
    ours.load_state_dict(theirs.state_dict())
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    torch.testing.assert_close(encoder_reference_points(spatial, ratios), theirs.get_reference_points(SHAPES, ratios, "cpu"))
    expected = theirs(
        inputs_embeds=memory, attention_mask=~mask, position_embeddings=pos, spatial_shapes=spatial,
        spatial_shapes_list=SHAPES, level_start_index=start, valid_ratios=ratios, output_hidden_states=True,
    )
    out = ours(memory, spatial, start, ratios, pos, mask, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state)
    with_list = ours(memory, spatial, start, ratios, pos, mask, spatial_shapes_list=SHAPES)
    torch.testing.assert_close(with_list.last_hidden_state, expected.last_hidden_state)
    assert with_list.hidden_states is None
    assert len(out.hidden_states) == len(expected.hidden_states) == 3
    for a, b in zip(out.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_decoder_stack_matches_transformers(refine, ref_dim):
    config = hf_config(layers=3)
    theirs = hf.DeformableDetrDecoder(config)
    ours = our_decoder(layers=3, refine=refine)
    if refine:
        theirs.bbox_embed = nn.ModuleList(hf.DeformableDetrMLPPredictionHead(D, D, 4, 3) for _ in range(3))
    randomize(theirs, 4).eval()
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    memory, _, mask, ratios, spatial, start = padded_inputs()
    query, query_pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    ref = torch.rand(2, 5, ref_dim) * 0.8 + 0.1
    expected = theirs(
        inputs_embeds=query, encoder_hidden_states=memory, encoder_attention_mask=~mask, position_embeddings=query_pos,
        reference_points=ref, spatial_shapes=spatial, spatial_shapes_list=SHAPES, level_start_index=start, valid_ratios=ratios,
    )
    out = ours(query, ref, memory, spatial, start, ratios, query_pos, mask)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(out.intermediate_hidden_states, expected.intermediate_hidden_states)
    torch.testing.assert_close(out.intermediate_reference_points, expected.intermediate_reference_points)
    assert out.intermediate_hidden_states.shape == (2, 3, 5, D)


def test_two_stage_decoder_state_dict_matches_transformers_layout():
    """Two-stage: one extra class and box head (for the proposals), held by the decoder."""
    theirs = hf.DeformableDetrDecoder(hf_config(layers=2))
    theirs.bbox_embed = nn.ModuleList(hf.DeformableDetrMLPPredictionHead(D, D, 4, 3) for _ in range(3))
    theirs.class_embed = nn.ModuleList(nn.Linear(D, 7) for _ in range(3))
    class_embed = nn.ModuleList(nn.Linear(D, 7) for _ in range(3))
    ours = DeformableDecoder(
        [DeformableDecoderLayer(D, 20, num_heads=HEADS, num_levels=2, num_points=2) for _ in range(2)],
        bbox_embed=[MLP(D, D, 4, 3) for _ in range(3)],
        class_embed=class_embed,
    )
    assert ours.class_embed is class_embed  # shared with the model, not copied
    ours.load_state_dict(theirs.state_dict())  # strict: every name lines up


def test_refinement_on_off_semantics():
    torch.manual_seed(5)
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    query, query_pos = torch.randn(2, 4, D), torch.randn(2, 4, D)
    ref = torch.rand(2, 4, 2)
    plain = our_decoder(layers=3)(query, ref, memory, spatial, start, ratios, query_pos, mask)
    assert plain.intermediate_reference_points.shape == (2, 3, 4, 2)
    for layer in range(3):
        torch.testing.assert_close(plain.intermediate_reference_points[:, layer], ref)

    decoder = our_decoder(layers=3, refine=True)
    out = decoder(query, ref, memory, spatial, start, ratios, query_pos, mask)
    assert out.intermediate_reference_points.shape == (2, 3, 4, 4)
    assert not out.intermediate_reference_points.requires_grad  # detached between layers
    previous = ref
    for layer in range(3):
        expected = refine_boxes(decoder.bbox_embed[layer](out.intermediate_hidden_states[:, layer]), previous)
        torch.testing.assert_close(out.intermediate_reference_points[:, layer], expected)
        previous = expected


def test_padded_batch_equals_unpadded_image():
    """Image 1 of the batch is padded at both levels; run alone without padding it must give the
    same encoder output on its real pixels and the same decoder output."""
    torch.manual_seed(6)
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    encoder, decoder = our_encoder().eval(), our_decoder(refine=True).eval()
    query, query_pos = torch.randn(2, 4, D), torch.randn(2, 4, D)
    ref = torch.rand(2, 4, 2) * 0.8 + 0.1
    memory_out = encoder(memory, spatial, start, ratios, pos, mask).last_hidden_state
    dec_out = decoder(query, ref, memory_out, spatial, start, ratios, query_pos, mask)

    real_shapes = [(4, 3), (2, 2)]
    keep = ~mask[1]
    alone_spatial, alone_start = level_index(real_shapes)
    alone_memory = encoder(memory[1:, keep], alone_spatial, alone_start, None, pos[1:, keep], None).last_hidden_state
    torch.testing.assert_close(memory_out[1:, keep], alone_memory, rtol=1e-5, atol=1e-5)
    alone_dec = decoder(query[1:], ref[1:], alone_memory, alone_spatial, alone_start, None, query_pos[1:], None)
    torch.testing.assert_close(dec_out.last_hidden_state[1:], alone_dec.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dec_out.intermediate_reference_points[1:], alone_dec.intermediate_reference_points, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(7)
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    encoder = our_encoder()
    decoder = our_decoder(refine=True)
    memory = memory.requires_grad_()
    query, query_pos = torch.randn(2, 4, D), torch.randn(2, 4, D)
    ref = torch.rand(2, 4, 2)
    memory_out = encoder(memory, spatial, start, ratios, pos, mask).last_hidden_state
    out = decoder(query, ref, memory_out, spatial, start, ratios, query_pos, mask)
    # as a model does: boxes from each layer's head (the decoder's own use is detached)
    loss = out.intermediate_hidden_states.square().mean()
    for layer in range(2):
        loss = loss + decoder.bbox_embed[layer](out.intermediate_hidden_states[:, layer]).sum()
    loss.backward()
    for name, p in list(encoder.named_parameters()) + list(decoder.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert memory.grad[~mask].abs().sum() > 0


class CountingAttention(nn.Module):
    """A swapped-in attention with the MSDA call signature: MSDA with per-call counting."""

    def __init__(self, points):
        super().__init__()
        self.inner = MultiScaleDeformableAttention(D, HEADS, 2, points)
        self.calls = 0

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask=None):
        self.calls += 1
        return self.inner(query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask)


def test_attention_is_injected_not_patched():
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    encoder = DeformableEncoder([DeformableEncoderLayer(D, 24, self_attn=lambda: CountingAttention(1)) for _ in range(2)])
    decoder = DeformableDecoder([DeformableDecoderLayer(D, 20, encoder_attn=CountingAttention(5))])
    memory_out = encoder(memory, spatial, start, ratios, pos, mask).last_hidden_state
    decoder(torch.randn(2, 3, D), torch.rand(2, 3, 2), memory_out, spatial, start, ratios, None, mask)
    assert [layer.self_attn.calls for layer in encoder.layers] == [1, 1]
    assert decoder.layers[0].encoder_attn.calls == 1
    assert encoder.layers[0].self_attn is not encoder.layers[1].self_attn
    assert decoder.layers[0].encoder_attn.inner.num_points == 5


def test_dropout_arguments_are_used_in_training_only():
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    ref = encoder_reference_points(spatial, ratios)
    layer = DeformableEncoderLayer(D, 24, num_heads=HEADS, num_levels=2, num_points=3, dropout=0.5, activation_dropout=0.5)
    layer.train()
    torch.manual_seed(0)
    a = layer(memory, ref, spatial, start, pos, mask)
    torch.manual_seed(1)
    b = layer(memory, ref, spatial, start, pos, mask)
    assert not torch.allclose(a, b)
    layer.eval()
    torch.testing.assert_close(layer(memory, ref, spatial, start, pos, mask), layer(memory, ref, spatial, start, pos, mask))


def test_input_errors_name_the_argument():
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    encoder, decoder = our_encoder(), our_decoder()
    with pytest.raises(ValueError, match="padding_mask"):
        encoder(memory, spatial, start, ratios, pos, mask.float())
    with pytest.raises(ValueError, match="valid_ratios"):
        encoder(memory, spatial, start, ratios[:, :1], pos, mask)
    with pytest.raises(ValueError, match="spatial_shapes"):
        encoder(memory[:, :-1], spatial, start, ratios, pos[:, :-1], mask[:, :-1])
    with pytest.raises(ValueError, match="reference_points"):
        decoder(torch.randn(2, 3, D), torch.rand(2, 3, 3), memory, spatial, start, ratios, None, mask)
    with pytest.raises(ValueError, match="bbox_embed"):
        DeformableDecoder([DeformableDecoderLayer(D, 8, num_heads=HEADS, num_levels=2)] * 2, bbox_embed=[MLP(D, D, 4, 3)])
    with pytest.raises(TypeError, match="self_attn"):
        DeformableEncoderLayer(D, 8, self_attn=3)
    with pytest.raises(ValueError, match="dropout"):
        DeformableDecoderLayer(D, 8, dropout=1.5)


@pytest.mark.parametrize("mode", ["autocast", "bf16_weights"])
def test_low_precision_runs_and_stays_close(mode):
    torch.manual_seed(8)
    memory, pos, mask, ratios, spatial, start = padded_inputs()
    encoder, decoder = our_encoder().eval(), our_decoder(refine=True).eval()
    query, query_pos, ref = torch.randn(2, 4, D), torch.randn(2, 4, D), torch.rand(2, 4, 2)
    encoded = encoder(memory, spatial, start, ratios, pos, mask).last_hidden_state
    expected = decoder(query, ref, encoded, spatial, start, ratios, query_pos, mask).last_hidden_state
    if mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoded = encoder(memory, spatial, start, ratios, pos, mask).last_hidden_state
            out = decoder(query, ref, encoded, spatial, start, ratios, query_pos, mask).last_hidden_state
    else:
        bf16 = lambda t: t.to(torch.bfloat16)
        encoder, decoder = encoder.to(torch.bfloat16), decoder.to(torch.bfloat16)
        encoded = encoder(bf16(memory), spatial, start, bf16(ratios), bf16(pos), mask).last_hidden_state
        out = decoder(bf16(query), bf16(ref), encoded, spatial, start, bf16(ratios), bf16(query_pos), mask).last_hidden_state
        assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0.15)
