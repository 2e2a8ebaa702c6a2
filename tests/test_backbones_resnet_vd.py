"""ResNet-vd against ``transformers``' ``RTDetrResNetBackbone`` (4.57.6): same state-dict names both
ways, same feature maps, on tiny basic-block (R18-vd-like) and bottleneck (R50-vd-like) networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import RTDetrResNetBackbone, RTDetrResNetConfig

from models.backbones import ConvEncoder
from models.backbones.resnet_vd import RESNET_VD_VARIANTS, ResNetVdBody, resnet_vd, resnet_vd_from_transformers_config

CONFIGS = {
    "basic": dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 2]),
    "bottleneck": dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[2, 1, 2, 1]),
    "bottleneck-1x1-stride": dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1],
                                  downsample_in_bottleneck=True),
    "basic-first-stage-stride": dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[2, 1, 1, 1],
                                     downsample_in_first_stage=True),
    "bottleneck-first-stage-stride": dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                          downsample_in_first_stage=True),
}


def _theirs(fields: dict, out_indices) -> RTDetrResNetBackbone:
    model = RTDetrResNetBackbone(RTDetrResNetConfig(**fields, out_indices=list(out_indices)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize(("name", "freeze"), [(name, True) for name in sorted(CONFIGS)] + [("basic", False), ("bottleneck", False)])
def test_resnet_vd_matches_transformers(name, freeze):
    out_indices = (0, 2, 3, 4) if "basic" in name else (1, 2, 3, 4)
    theirs = _theirs(CONFIGS[name], out_indices)
    ours = resnet_vd_from_transformers_config(theirs.config, freeze_batch_norm=freeze).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every transformers name is ours
    pixel_values = torch.randn(2, 3, 50, 38)  # odd sizes: ceil-mode pooling on the shortcut
    expected = theirs(pixel_values).feature_maps
    with torch.no_grad():
        features = ours(pixel_values)
    assert len(features) == len(expected) == len(out_indices)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ours.channels == [f.shape[1] for f in expected]
    for stride, feature in zip(ours.strides, features):
        assert feature.shape[-2:] == (-(-50 // stride), -(-38 // stride))
    assert all(isinstance(m, FrozenBatchNorm2d) for m in ours.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))) == freeze

    back = _theirs(CONFIGS[name], out_indices)
    missing, unexpected = back.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    for got, want in zip(back(pixel_values).feature_maps, expected):
        torch.testing.assert_close(got, want)


def test_resnet_vd_under_conv_encoder_and_published_sizes():
    body = resnet_vd("resnet18vd", out_indices=(2, 3, 4))
    assert body.channels == [128, 256, 512] and body.strides == [8, 16, 32]
    assert resnet_vd("resnet50vd").channels == [512, 1024, 2048]
    assert set(RESNET_VD_VARIANTS) == {"resnet18vd", "resnet34vd", "resnet50vd", "resnet101vd"}
    small = ResNetVdBody((1, 1, 1, 1), "basic", (8, 16, 24, 32), 8).eval()
    encoder = ConvEncoder(small)
    assert encoder.intermediate_channel_sizes == [16, 24, 32]
    maps = encoder(torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.long))
    assert [tuple(f.shape) for f, _ in maps] == [(1, 16, 8, 8), (1, 24, 4, 4), (1, 32, 2, 2)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layer_type": "wide"}, "layer_type"), ({"depths": (1, 0, 1, 1)}, "depths"), ({"hidden_sizes": (8, 16)}, "hidden_sizes"),
    ({"embedding_size": 7}, "embedding_size"), ({"out_indices": (3, 2)}, "out_indices"), ({"out_indices": (5,)}, "out_indices"),
    ({"layer_type": "bottleneck", "hidden_sizes": (10, 16, 24, 32)}, "hidden_sizes"),
])
def test_resnet_vd_names_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNetVdBody(**{"depths": (1, 1, 1, 1), "layer_type": "basic", "hidden_sizes": (8, 16, 24, 32), "embedding_size": 8, **kwargs})
    with pytest.raises(ValueError, match="hidden_act"):
        resnet_vd_from_transformers_config(RTDetrResNetConfig(hidden_act="gelu"))
    with pytest.raises(ValueError, match="pixel_values"):
        ResNetVdBody((1, 1, 1, 1), "basic", (8, 16, 24, 32), 8)(torch.randn(1, 1, 32, 32))


def test_resnet_vd_exports():
    body = ResNetVdBody((1, 1, 1, 1), "bottleneck", (16, 32, 48, 64), 8).eval()
    pixel_values = torch.randn(1, 3, 64, 48)
    exported = torch.export.export(body, (pixel_values,))
    for got, want in zip(exported.module()(pixel_values), body(pixel_values)):
        torch.testing.assert_close(got, want)
