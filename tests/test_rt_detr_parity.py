"""RT-DETR against ``transformers`` 4.57.6's ``RTDetrForObjectDetection`` / ``RTDetrModel`` with the
same weights (random, random batch-norm statistics): eval outputs within 1e-4, the training loss
with labels (denoising off) within 1e-4 relative, term by term; the options ``transformers``
cannot run, against the paper's definition."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from models import RTDetrConfig, RTDetrForObjectDetection, RTDetrModel  # noqa: E402
from tests.conftest import tiny_rt_detr_fields  # noqa: E402

CONFIGS = {
    "basic-silu": ({}, (2, 96, 128)),
    "bottleneck-relu": (
        {"backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 16, "hidden_sizes": [32, 48, 64, 96], "depths": [1, 2, 1, 1],
                             "layer_type": "bottleneck", "out_indices": [2, 3, 4]},
         "encoder_in_channels": [48, 64, 96], "activation_function": "relu", "encoder_activation_function": "relu", "hidden_expansion": 1.0,
         "decoder_layers": 3, "num_labels": 5, "decoder_n_points": 2, "decoder_attention_heads": 2, "encode_proj_layers": [1, 2]},
        (1, 64, 96),
    ),
    "two-levels": (
        {"backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1],
                             "layer_type": "basic", "out_indices": [3, 4]},
         "encoder_in_channels": [48, 64], "feat_strides": [16, 32], "encode_proj_layers": [1], "decoder_in_channels": [32, 32],
         "num_feature_levels": 2, "decoder_layers": 1, "num_queries": 6, "with_box_refine": False},
        (2, 128, 64),
    ),
    "no-aifi-odd-eps": (
        {"encoder_layers": 0, "batch_norm_eps": 1e-3, "layer_norm_eps": 1e-6, "positional_encoding_temperature": 20, "decoder_n_points": 3,
         "num_queries": 7, "decoder_activation_function": "gelu"},
        (2, 64, 96),
    ),
}


def _theirs_config(fields: dict) -> "transformers.RTDetrConfig":
    return transformers.RTDetrConfig(**copy.deepcopy(fields))


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Random affine parameters and running statistics in every batch norm (frozen ones included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_mean") and hasattr(module, "running_var") and module.running_mean is not None:
                width = module.running_mean.shape[0]
                module.running_mean.copy_(torch.randn(width, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(width, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(width, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(width, generator=generator) * 0.1)


def _pair(fields: dict, seed: int = 0, *, bare: bool = False) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    theirs = (transformers.RTDetrModel if bare else transformers.RTDetrForObjectDetection)(_theirs_config(fields))
    _randomize_norms(theirs, seed)
    with torch.no_grad():  # the heads start at zero / a constant: give them values that matter
        for name, parameter in theirs.named_parameters():
            if "bbox_embed" in name or "enc_bbox_head" in name or "class_embed" in name or "score_head" in name:
                parameter.normal_(0.0, 0.2)
    ours = (RTDetrModel if bare else RTDetrForObjectDetection)(RTDetrConfig(**copy.deepcopy(fields)))
    ours.load_state_dict(theirs.state_dict(), strict=False)
    missing = set(theirs.state_dict()) - set(ours.state_dict())
    assert all(re.match(r"model\.decoder\.(class|bbox)_embed\.", key) for key in missing), sorted(missing)[:5]
    assert set(ours.state_dict()) <= set(theirs.state_dict())
    return theirs.eval(), ours.eval()


def _close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < tolerance


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_outputs_equal_transformers(name):
    overrides, (batch, height, width) = CONFIGS[name]
    theirs, ours = _pair(tiny_rt_detr_fields(**overrides))
    pixels = torch.rand(batch, 3, height, width)
    with torch.no_grad():
        expected, actual = theirs(pixel_values=pixels), ours(pixel_values=pixels)
    for field in ("logits", "pred_boxes", "intermediate_logits", "intermediate_reference_points", "intermediate_hidden_states",
                  "last_hidden_state", "init_reference_points", "enc_topk_logits", "enc_topk_bboxes",
                  "enc_outputs_class", "enc_outputs_coord_logits"):
        _close(getattr(actual, field), getattr(expected, field))
    for mine, reference in zip(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state):
        _close(mine, reference)
    assert actual.logits.abs().max() > 0.5, "the comparison must see non-trivial logits"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bare_model_equals_transformers(name):
    overrides, (batch, height, width) = CONFIGS[name]
    theirs, ours = _pair(tiny_rt_detr_fields(**overrides), bare=True)
    pixels = torch.rand(batch, 3, height, width)
    with torch.no_grad():
        expected, actual = theirs(pixel_values=pixels), ours(pixel_values=pixels)
    for field in ("last_hidden_state", "intermediate_hidden_states", "intermediate_reference_points", "enc_topk_logits", "init_reference_points"):
        _close(getattr(actual, field), getattr(expected, field))
    assert actual.intermediate_logits is None and not expected.intermediate_logits  # no heads: no logits (theirs: ())


def _their_name(name: str, decoder_layers: int) -> str:
    """Our term name → ``transformers``': ``_<i>`` → ``_aux_<i>``, ``_interm`` → ``_aux_<D-1>``."""
    return re.sub(r"_(\d+)$", r"_aux_\1", name).replace("_interm", f"_aux_{decoder_layers - 1}")


WEIGHTS = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("auxiliary_loss", [True, False])
def test_training_loss_equals_transformers(name, auxiliary_loss):
    """With ``auxiliary_loss=False`` ``transformers`` fails (UnboundLocalError in its forward); the
    definition is then the final layer's terms alone, which its ``auxiliary_loss=True`` run reports."""
    overrides, (batch, height, width) = CONFIGS[name]
    fields = tiny_rt_detr_fields(**overrides, auxiliary_loss=auxiliary_loss)
    theirs, ours = _pair({**fields, "auxiliary_loss": True}, seed=1)
    ours = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(fields))).eval() if not auxiliary_loss else ours
    ours.load_state_dict(theirs.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(2)
    labels = []
    for count in [3, 1, 0][:batch]:
        centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        labels.append({"class_labels": torch.randint(0, fields["num_labels"], (count,), generator=generator), "boxes": torch.cat([centers, sizes], 1)})
    pixels = torch.rand(batch, 3, height, width)
    theirs.train()
    ours.train()
    expected = theirs(pixel_values=pixels, labels=copy.deepcopy(labels))
    actual = ours(pixel_values=pixels, labels=copy.deepcopy(labels))
    decoder_layers = fields["decoder_layers"]
    mapped = {_their_name(term, decoder_layers): value.item() * WEIGHTS[re.match(r"loss_[a-z]+", term).group()] for term, value in actual.loss_dict.items()}
    reference = {term: value for term, value in expected.loss_dict.items() if auxiliary_loss or "_aux_" not in term}
    assert set(mapped) == set(reference)
    total = sum(value.item() for value in reference.values())
    assert abs(actual.loss.item() - total) <= 1e-4 * abs(total)
    for term, value in reference.items():
        assert mapped[term] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), term
    actual.loss.backward()
    assert all(p.grad is not None for n, p in ours.named_parameters() if p.requires_grad and "enc_" not in n and "denoising" not in n)


def test_learn_initial_query_follows_the_paper():
    """``transformers`` fails here (it tiles the embedding module); the paper's definition is its
    weight as every image's content queries, which is what its forward means to do."""

    class TileableEmbedding(nn.Embedding):
        def tile(self, repeats):
            return self.weight.tile(repeats)

    fields = tiny_rt_detr_fields(learn_initial_query=True)
    torch.manual_seed(0)
    theirs = transformers.RTDetrForObjectDetection(_theirs_config(fields)).eval()
    fixed = TileableEmbedding(fields["num_queries"], fields["d_model"])
    fixed.load_state_dict(theirs.model.weight_embedding.state_dict())
    theirs.model.weight_embedding = fixed
    ours = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(fields))).eval()
    ours.load_state_dict(theirs.state_dict(), strict=False)
    assert "model.weight_embedding.weight" in ours.state_dict()
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _close(ours(pixel_values=pixels).logits, theirs(pixel_values=pixels).logits)


def test_anchor_image_size_precomputes_the_same_anchors():
    """``transformers`` fails in eval with ``anchor_image_size`` (its anchors are made before the
    model's dtype is known); precomputed anchors are the grid anchors of that size, so the outputs
    equal the model's without it, at that size and at any other."""
    fields = tiny_rt_detr_fields()
    torch.manual_seed(0)
    plain = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(fields))).eval()
    anchored = RTDetrForObjectDetection(RTDetrConfig(**copy.deepcopy(fields), anchor_image_size=[64, 96])).eval()
    anchored.load_state_dict(plain.state_dict())
    assert anchored.model.query_selection.anchors.shape[1] == 8 * 12 + 4 * 6 + 2 * 3
    with torch.no_grad():
        for size in ((64, 96), (96, 64)):
            pixels = torch.rand(1, 3, *size)
            _close(anchored(pixel_values=pixels).logits, plain(pixel_values=pixels).logits, 1e-6)


def test_extra_levels_follow_the_authors_definition():
    """``transformers`` fails with ``num_feature_levels`` above the encoder's levels (it feeds a
    list to a convolution); the authors' decoder adds a 3x3 stride-2 conv of the last map, then of
    the previous extra level."""
    fields = tiny_rt_detr_fields(num_feature_levels=5)
    model = RTDetrModel(RTDetrConfig(**fields)).eval()
    maps = [torch.rand(1, 32, 8, 8), torch.rand(1, 32, 4, 4), torch.rand(1, 32, 2, 2)]
    features = model.decoder_inputs(maps)
    projection = model.decoder_input_proj
    with torch.no_grad():
        fourth = projection[3](maps[-1])
        fifth = projection[4](fourth)
        expected = torch.cat([m.flatten(2).transpose(1, 2) for m in [projection[i](maps[i]) for i in range(3)] + [fourth, fifth]], 1)
    assert features.spatial_shapes_list == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    _close(features.source.detach(), expected)
    with torch.no_grad():
        assert model(pixel_values=torch.rand(1, 3, 64, 64)).last_hidden_state.shape == (1, 10, 32)


def _dn_name(name: str, decoder_layers: int) -> str:
    """Our denoising term → ``transformers``': ``_dn`` (last layer) → ``_dn_<D-1>``, ``_dn_<i>`` kept."""
    return name + f"_{decoder_layers - 1}" if name.endswith("_dn") else name


@pytest.mark.parametrize("num_denoising, counts", [(20, [3, 1]), (5, [2, 2]), (3, [4, 0])])
def test_denoising_in_training_equals_transformers_with_the_same_noise(num_denoising, counts):
    """Same seed, same noise: the denoising terms (``_dn``) and the auxiliary ones equal
    ``transformers``'. Its final-layer terms are not compared: ``transformers`` matches the final
    layer over the denoising queries too (its ``logits`` keep them in training), where the authors'
    code matches the matching queries only, as ours does."""
    fields = tiny_rt_detr_fields(num_denoising=num_denoising, decoder_layers=3)
    theirs, ours = _pair(fields, seed=3)
    generator = torch.Generator().manual_seed(4)
    labels = [{"class_labels": torch.randint(0, 3, (n,), generator=generator), "boxes": torch.cat([torch.rand(n, 2, generator=generator) * 0.6 + 0.2, torch.rand(n, 2, generator=generator) * 0.3 + 0.05], 1)} for n in counts]
    pixels = torch.rand(len(counts), 3, 64, 96)
    theirs.train()
    ours.train()
    torch.manual_seed(5)
    expected = theirs(pixel_values=pixels, labels=copy.deepcopy(labels))
    torch.manual_seed(5)
    actual = ours(pixel_values=pixels, labels=copy.deepcopy(labels))
    assert actual.denoising_meta_values["dn_num_group"] == expected.denoising_meta_values["dn_num_group"]
    assert actual.denoising_meta_values["dn_num_split"] == list(expected.denoising_meta_values["dn_num_split"])
    mapped = {_dn_name(_their_name(term, 3) if "_dn" not in term else term, 3): value.item() * WEIGHTS[re.match(r"loss_[a-z]+", term).group()]
              for term, value in actual.loss_dict.items()}
    compared = [term for term in expected.loss_dict if "_dn_" in term or "_aux_" in term]
    assert len([t for t in compared if "_dn_" in t]) == 9
    for term in compared:
        assert mapped[term] == pytest.approx(expected.loss_dict[term].item(), rel=1e-4, abs=1e-6), term
    assert actual.logits.shape[1] == fields["num_queries"]  # the matching queries only


@pytest.mark.parametrize("name", ["basic-silu", "bottleneck-relu"])
def test_hidden_states_and_attentions_equal_transformers(name):
    overrides, (batch, height, width) = CONFIGS[name]
    theirs, ours = _pair(tiny_rt_detr_fields(**overrides))
    pixels = torch.rand(batch, 3, height, width)
    with torch.no_grad():
        expected = theirs(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        actual = ours(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    for field in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions", "cross_attentions"):
        mine, reference = getattr(actual, field), getattr(expected, field)
        assert len(mine) == len(reference) > 0, field
        for a, b in zip(mine, reference):
            _close(a, b)
