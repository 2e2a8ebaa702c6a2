"""Feed-forward and norm injection: default checkpoint keys unchanged, FeedForward equals the
built-in block, an injected block replaces it; activations that change the width are refused."""

import pytest
import torch
from torch import nn

from detr_blocks import ACTIVATIONS, DeformableDecoderLayer, DeformableEncoderLayer, FeedForward, get_activation

D = 16
OLD_FFN_KEYS = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "final_layer_norm.weight", "final_layer_norm.bias"}


def by_hand(x, fc1, fc2, norm):
    return norm(x + fc2(torch.relu(fc1(x))))


@pytest.mark.parametrize("layer_class", [DeformableEncoderLayer, DeformableDecoderLayer])
def test_default_keys_and_block(layer_class):
    torch.manual_seed(0)
    layer = layer_class(D, 24, num_heads=2, num_levels=2, num_points=2).eval()
    keys = set(layer.state_dict())
    assert OLD_FFN_KEYS <= keys and not any(k.startswith("feed_forward") for k in keys)
    assert layer.feed_forward is None
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(layer.feed_forward_block(x), by_hand(x, layer.fc1, layer.fc2, layer.final_layer_norm))
    block = FeedForward(D, 24).eval()
    block.load_state_dict({k: v for k, v in layer.state_dict().items() if k in OLD_FFN_KEYS})
    torch.testing.assert_close(block(x), layer.feed_forward_block(x), rtol=0, atol=0)


class GatedFeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down, self.norm = nn.Linear(D, 8), nn.Linear(D, 8), nn.Linear(8, D), nn.RMSNorm(D)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.norm(x + self.down(nn.functional.silu(self.gate(x)) * self.up(x)))


@pytest.mark.parametrize("layer_class", [DeformableEncoderLayer, DeformableDecoderLayer])
def test_injected_feed_forward_and_norm(layer_class):
    layer = layer_class(D, 24, num_heads=2, num_levels=2, num_points=2, feed_forward=GatedFeedForward, norm_layer=nn.RMSNorm)
    keys = set(layer.state_dict())
    assert not keys & OLD_FFN_KEYS and "feed_forward.gate.weight" in keys
    assert isinstance(layer.self_attn_layer_norm, nn.RMSNorm)
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(layer.feed_forward_block(x), layer.feed_forward(x))
    assert layer.feed_forward.calls == 2
    with pytest.raises(TypeError, match="feed_forward"):
        layer_class(D, 24, feed_forward=3)


def test_feed_forward_errors_and_dropout():
    with pytest.raises(ValueError, match="ffn_dim"):
        FeedForward(D, 0)
    with pytest.raises(ValueError, match="activation_dropout"):
        FeedForward(D, 8, activation_dropout=1.0)
    block = FeedForward(D, 8, dropout=0.5).train()
    x = torch.randn(4, D)
    assert not torch.equal(block(x), block(x))
    block.eval()
    torch.testing.assert_close(block(x), block(x))


def test_activation_names_are_shape_preserving():
    assert "glu" not in ACTIVATIONS
    x = torch.randn(3, 6)
    for name in ACTIVATIONS:
        assert get_activation(name)(x).shape == x.shape
    with pytest.raises(ValueError, match="activation"):
        get_activation("glu")
