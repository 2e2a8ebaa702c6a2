"""DINO as a model: denoising isolation, dn_number=0, training loss, the compiled op, factories."""

from __future__ import annotations

import pytest
import torch

import models
from models import DinoConfig, DinoForObjectDetection

TINY = dict(
    backbone="resnet18", backbone_out_indices=[2, 3], num_feature_levels=3, d_model=32, num_queries=12, encoder_layers=1, decoder_layers=2,
    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_n_points=2, decoder_n_points=2,
    num_labels=4, dn_number=6,
)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, 64, 80, generator=generator)
    pixel_mask = torch.ones(2, 64, 80, dtype=torch.long)
    pixel_mask[1, :, 60:] = 0
    labels = [
        {"class_labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    return pixel_values, pixel_mask, labels


def _model(**overrides) -> DinoForObjectDetection:
    torch.manual_seed(0)
    return DinoForObjectDetection(DinoConfig(**{**TINY, **overrides}))


def test_config_defaults_are_the_authors_4scale():
    config = DinoConfig()
    assert (config.num_queries, config.num_feature_levels, config.encoder_layers, config.decoder_layers, config.d_model) == (900, 4, 6, 6, 256)
    assert (config.encoder_ffn_dim, config.dropout, config.decoder_n_points, config.position_embedding_temperature) == (2048, 0.0, 4, 20.0)
    assert (config.dn_number, config.dn_label_noise_ratio, config.dn_box_noise_scale) == (100, 0.5, 0.4)
    assert (config.class_loss_coefficient, config.bbox_loss_coefficient, config.giou_loss_coefficient) == (1.0, 5.0, 2.0)
    assert (config.class_cost, config.bbox_cost, config.giou_cost, config.focal_alpha) == (2.0, 5.0, 2.0, 0.25)
    assert config.dec_pred_class_embed_share and not config.two_stage_class_embed_share and config.num_labels == 91


def test_config_json_both_ways_and_validation(tmp_path):
    config = DinoConfig(**TINY, id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    config.save_pretrained(tmp_path)
    assert DinoConfig.from_pretrained(tmp_path) == config
    for bad, match in [({"num_queries": 0}, "num_queries"), ({"two_stage_class_embed_share": True, "dec_pred_class_embed_share": False}, "two_stage_class_embed_share"),
                       ({"backbone_out_indices": [3, 2]}, "backbone_out_indices"), ({"num_querys": 3}, "num_querys"), ({"activation_function": "glu"}, "activation_function")]:
        with pytest.raises((ValueError, TypeError), match=match):
            DinoConfig(**{**TINY, **bad})


def test_denoising_queries_never_reach_the_matching_queries():
    """In training, the matching queries' outputs with denoising queries (labels given) equal those
    without (no labels), and their gradient w.r.t. the denoising content is exactly zero."""
    model = _model().train()
    pixel_values, pixel_mask, labels = _batch()
    torch.manual_seed(1)
    with_dn = model(pixel_values, pixel_mask, labels=labels)
    assert with_dn.denoising_meta is not None and with_dn.dn_outputs is not None
    without = model(pixel_values, pixel_mask)
    assert without.denoising_meta is None
    torch.testing.assert_close(with_dn.logits, without.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_dn.pred_boxes, without.pred_boxes, atol=1e-5, rtol=0)

    # gradient check: the label embedding (only used by denoising queries) gets no gradient from
    # the matching queries' outputs, but does from the denoising outputs
    model.zero_grad()
    torch.manual_seed(1)
    out = model(pixel_values, pixel_mask, labels=labels)
    (out.logits.sum() + out.pred_boxes.sum()).backward(retain_graph=True)
    assert model.model.label_enc.weight.grad is None or model.model.label_enc.weight.grad.abs().max() == 0
    out.dn_outputs["logits"].sum().backward()
    assert model.model.label_enc.weight.grad.abs().max() > 0


def test_dn_number_zero_is_dino_without_denoising():
    pixel_values, pixel_mask, labels = _batch()
    plain = _model(dn_number=0).train()
    out = plain(pixel_values, pixel_mask, labels=labels)
    assert out.denoising_meta is None and out.dn_outputs is None
    assert not any("_dn" in name for name in out.loss_dict)
    denoising = _model(dn_number=6).train()
    denoising.load_state_dict(plain.state_dict())
    torch.manual_seed(3)
    reference = denoising(pixel_values, pixel_mask, labels=labels)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=0)
    matching_terms = {k: v for k, v in reference.loss_dict.items() if "_dn" not in k}
    assert set(matching_terms) == set(out.loss_dict)
    for name, value in out.loss_dict.items():
        torch.testing.assert_close(value, matching_terms[name], atol=1e-5, rtol=1e-5)


def test_training_loss_has_every_term_and_decreases():
    model = _model()
    model.train()
    pixel_values, pixel_mask, labels = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(step)
        out = model(pixel_values, pixel_mask, labels=labels)
        assert torch.isfinite(out.loss)
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    names = set(out.loss_dict)
    for term in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_interm", "loss_bbox_interm", "loss_ce_dn", "loss_bbox_dn", "loss_giou_dn_0"):
        assert term in names, term
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


def test_look_forward_twice_reaches_the_previous_layer():
    """The last layer's box loss sends gradient into the previous layer's box head (through its
    undetached refined boxes), as DINO's look-forward-twice does; heads are unshared here."""
    model = _model(dec_pred_bbox_embed_share=False, dec_pred_class_embed_share=False).eval()
    pixel_values, pixel_mask, _ = _batch()
    out = model(pixel_values, pixel_mask)
    out.pred_boxes.sum().backward()
    assert model.bbox_embed[0].layers[-1].weight.grad.abs().max() > 0


def test_post_processing_works_on_dino_outputs():
    model = _model().eval()
    pixel_values, pixel_mask, _ = _batch()
    with torch.no_grad():
        out = model(pixel_values, pixel_mask)
    results = models.DeformableDetrImageProcessor().post_process_object_detection(out, threshold=0.0, target_sizes=[(64, 80), (64, 60)], top_k=5)
    assert [len(r["scores"]) for r in results] == [5, 5]
    assert all((r["boxes"][:, 2:] >= r["boxes"][:, :2]).all() for r in results)


def test_forward_uses_the_compiled_op(msda_cpu_library):
    model = _model().eval()
    pixel_values, pixel_mask, _ = _batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
        model(pixel_values, pixel_mask)
    names = {event.key for event in profile.key_averages()}
    assert "msda::ms_deform_attn" in names, sorted(name for name in names if "msda" in name)


@pytest.mark.parametrize("factory, levels", [("dino_4scale", 4), ("dino_5scale", 5)])
def test_factories(factory, levels):
    model = getattr(models, factory)(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, num_queries=5,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32).eval()
    assert model.config.num_feature_levels == levels == len(model.model.input_proj)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out.logits.shape == (1, 5, 91) and out.pred_boxes.shape == (1, 5, 4)


def test_docs_page_runs():
    from tests.doc_examples import DOCS, run_page

    namespace = run_page(DOCS / "dino.md")
    assert namespace["outputs"].logits.shape == (1, 900, 91)
    assert torch.isfinite(namespace["out"].loss)
    assert namespace["again"].config == namespace["model"].config


def test_output_flags_attentions_and_tuples():
    model = _model().eval()
    pixel_values, pixel_mask, _ = _batch()
    with torch.no_grad():
        out = model(pixel_values, pixel_mask, output_attentions=True, output_hidden_states=True)
        plain = model(pixel_values, pixel_mask)
        as_tuple = model(pixel_values, pixel_mask, return_dict=False)
    config = model.config
    assert len(out.encoder_attentions) == config.encoder_layers and len(out.cross_attentions) == config.decoder_layers
    assert out.cross_attentions[0].shape == (2, config.num_queries, config.decoder_attention_heads, config.num_feature_levels, config.decoder_n_points)
    assert out.decoder_attentions[0].shape == (2, config.decoder_attention_heads, config.num_queries, config.num_queries)
    torch.testing.assert_close(out.cross_attentions[0].sum((-2, -1)), torch.ones(2, config.num_queries, config.decoder_attention_heads))
    torch.testing.assert_close(out.logits, plain.logits, atol=0, rtol=0)
    assert len(out.decoder_hidden_states) == config.decoder_layers + 1 and plain.decoder_attentions is None
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(plain.to_tuple())
    torch.testing.assert_close(as_tuple[0], plain.logits)
    configured = _model(output_attentions=True).eval()
    with torch.no_grad():
        assert configured(pixel_values, pixel_mask).encoder_attentions is not None


def test_torch_export_of_dino(msda_cpu_library):
    model = _model().eval()
    pixel_values, pixel_mask, _ = _batch()
    program = torch.export.export(model, (pixel_values, pixel_mask))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("msda.ms_deform_attn" in target for target in targets)
    with torch.no_grad():
        exported, eager = program.module()(pixel_values, pixel_mask), model(pixel_values, pixel_mask)
    torch.testing.assert_close(exported.logits, eager.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(exported.pred_boxes, eager.pred_boxes, atol=1e-5, rtol=0)
