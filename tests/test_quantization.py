"""models.quantize: int8 detectors of both families, on tiny random models.

The int8 graphs run eagerly here (``compile=False``: float arithmetic on int8-rounded weights and
activations, the numbers inductor's int8 kernels compute, to rounding) so that the file stays fast;
``QUANTIZATION_COMPILE_TEST=1`` adds the inductor-compiled path (a minute or more of compiling).
benchmarks/bench_int8_accuracy.py measures the held-out AP of the compiled int8 demo detector.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("torchao")

import models  # noqa: E402
from models.cli.demo import DEMO_DINO_CONFIG, DEMO_MODEL_CONFIG  # noqa: E402
from models.quantization import QuantizationRecipe, QuantizationUnsupported, QuantizedDetector, cpu_support, quantize  # noqa: E402
from models.quantization.artifact import is_quantized_checkpoint, load_quantized, save_quantized  # noqa: E402

NARROW = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8, encoder_n_points=2, decoder_n_points=2)
SIZE = (64, 64)


def build(family: str) -> torch.nn.Module:
    """A random detector: plain Deformable DETR (learned queries), or DINO (two-stage, refinement, denoising off in eval)."""
    torch.manual_seed(0)
    if family == "deformable-detr":
        config = models.DeformableDetrConfig(**{**DEMO_MODEL_CONFIG, **NARROW, "with_box_refine": False, "two_stage": False})
        return models.DeformableDetrForObjectDetection(config).eval()
    return models.DinoForObjectDetection(models.DinoConfig(**{**DEMO_DINO_CONFIG, **NARROW, "dn_number": 4})).eval()


def images(count: int, seed: int) -> torch.Tensor:
    """Normalized-image-like inputs ``[count, 3, 64, 64]`` (what the processor produces: about zero mean, unit spread)."""
    return torch.randn(count, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["deformable-detr", "dino"])
def quantized(request, msda_cpu_library):
    """(family, float model, its int8 version calibrated on 3 batches of 2 images)."""
    model = build(request.param)
    calibration = [{"pixel_values": images(2, seed), "pixel_mask": torch.ones(2, *SIZE, dtype=torch.long)} for seed in range(3)]
    return request.param, model, quantize(model, calibration, compile=False)


def test_outputs_have_the_float_models_fields_and_shapes(quantized):
    _, model, int8 = quantized
    pixel_values = images(3, seed=10)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    actual = int8(pixel_values=pixel_values)
    assert {"logits", "pred_boxes"} <= set(actual)
    assert set(actual) == {name for name in expected.keys() if isinstance(expected[name], torch.Tensor)}
    for name in actual:
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].dtype == expected[name].dtype, name
    assert actual.logits is actual["logits"]


def test_int8_logits_follow_the_float_logits(quantized):
    """The int8 logits track the float ones: correlation >= 0.95 and mean |error| <= 0.1 x the
    logits' spread, on images the calibration never saw.

    Why these bounds: int8 activations with per-tensor scales round each quantized layer's input to
    1/255 of its calibrated range, a relative error of a few tenths of a percent per layer, and the
    tiny models here have about 15 quantized layers on each path; measured, the error is about 3% of
    the spread and the correlation above 0.99. A broken graph (a wrong scale, a layer wired to the
    wrong input, outputs swapped) gives errors of the order of the spread and a correlation near 0.
    The comparison uses the fields computed before any top-k choice (DINO's two-stage proposals pick
    queries by score, and a near-tie may pick another proposal in int8, which is not an error).
    """
    family, model, int8 = quantized
    pixel_values = images(4, seed=11)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    actual = int8(pixel_values=pixel_values)
    name = "logits" if family == "deformable-detr" else "enc_outputs_class"
    finite = torch.isfinite(expected[name]) & torch.isfinite(actual[name])
    reference, result = expected[name][finite], actual[name][finite]
    assert reference.numel() > 0.9 * expected[name].numel()
    correlation = torch.corrcoef(torch.stack([reference, result]))[0, 1]
    error = (result - reference).abs().mean() / reference.std()
    assert correlation >= 0.95, f"{name}: correlation {correlation:.3f}"
    assert error <= 0.1, f"{name}: mean |error| is {error:.3f} of the spread"
    assert not torch.equal(result, reference), "the int8 graph should not compute the float model exactly"


def test_save_and_load_give_identical_outputs(quantized, tmp_path):
    family, _, int8 = quantized
    if family == "dino":
        pytest.skip("one family is enough for the file format (the program holds the graph whatever it is)")
    save_quantized(int8, tmp_path / "int8")
    assert is_quantized_checkpoint(tmp_path / "int8")
    loaded = load_quantized(tmp_path / "int8", compile=False)
    assert isinstance(loaded, QuantizedDetector)
    assert loaded.config.to_dict() == int8.config.to_dict()
    assert (loaded.fields, loaded.canvas, loaded.recipe) == (int8.fields, int8.canvas, int8.recipe)
    pixel_values = images(3, seed=12)
    expected, actual = int8(pixel_values=pixel_values), loaded(pixel_values=pixel_values)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, equal_nan=True)


def test_a_float_checkpoint_is_not_a_quantized_one(tmp_path):
    build("deformable-detr").save_pretrained(tmp_path / "fp32")
    assert not is_quantized_checkpoint(tmp_path / "fp32")
    with pytest.raises(ValueError, match="directory: .* is not a quantized detector"):
        load_quantized(tmp_path / "fp32")


def test_smaller_images_are_padded_and_larger_ones_refused(quantized):
    _, model, int8 = quantized
    small = int8(pixel_values=images(2, seed=13)[:, :, :48, :56])
    assert small.logits.shape[0] == 2
    with pytest.raises(ValueError, match=r"pixel_values: 80x64 images do not fit the quantized graph's canvas 64x64"):
        int8(pixel_values=torch.zeros(1, 3, 80, 64))
    with pytest.raises(TypeError, match="labels"):
        int8(pixel_values=images(1, seed=14), labels=[{"class_labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="pixel_values: the int8 detector runs on the CPU"):
        int8(pixel_values=torch.zeros(1, 3, 64, 64, device="meta"))
    with pytest.raises(RuntimeError, match="inference only"):
        int8.train()


@pytest.mark.parametrize(
    "calibration, error, message",
    [
        ([], ValueError, r"calibration: is empty"),
        (None, TypeError, r"calibration: expected an iterable of processor outputs"),
        (5, TypeError, r"calibration: expected an iterable of processor outputs .* got int"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64)}, TypeError, r"calibration: .*wrap it in a list"),
        ([torch.zeros(1, 3, 64, 64)], TypeError, r"calibration\[0\]: expected a mapping with 'pixel_values'"),
        ([{"pixel_mask": torch.ones(1, 64, 64)}], ValueError, r"calibration\[0\]: has no 'pixel_values'"),
        ([{"pixel_values": torch.zeros(3, 64, 64)}], ValueError, r"calibration\[0\]: expected a float tensor \[B, 3, H, W\]"),
        ([{"pixel_values": torch.zeros(1, 3, 64, 64), "pixel_mask": torch.ones(1, 32, 32)}], ValueError, r"calibration\[0\]: its pixel_mask"),
    ],
    ids=["empty", "none", "int", "single-mapping", "tensor-item", "no-pixel-values", "3d-pixel-values", "mask-shape"],
)
def test_bad_calibration_is_refused_naming_the_argument(calibration, error, message):
    with pytest.raises(error, match=message):
        quantize(build("deformable-detr"), calibration, compile=False)


def test_bad_model_and_recipe_are_refused_naming_the_argument():
    calibration = [{"pixel_values": images(1, seed=0)}]
    with pytest.raises(TypeError, match="model: expected a detector module"):
        quantize(torch.nn.Linear(2, 2), calibration)
    with pytest.raises(TypeError, match="recipe: expected a QuantizationRecipe"):
        quantize(build("deformable-detr"), calibration, recipe={"activations": "static"})
    with pytest.raises(ValueError, match="activations: must be one of"):
        QuantizationRecipe(activations="int4")


def test_recipe_keeps_the_named_layers_in_float():
    recipe = QuantizationRecipe()
    model = build("dino")
    kept = recipe.fp32_layers(model)
    assert kept and all(any(part in name.split(".") for part in recipe.keep_fp32) for name in kept)
    assert any(name.endswith("sampling_offsets") for name in kept)
    assert not any(name.endswith("value_proj") for name in kept)
    assert QuantizationRecipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "patch, message",
    [
        ("torchao", r"needs torchao \(pip install torchao\)"),
        ("isa", r"needs an x86-64 CPU with AVX2"),
        ("compiler", r"needs a C\+\+ compiler"),
    ],
)
def test_a_machine_without_what_the_path_needs_is_refused_in_one_line(monkeypatch, patch, message):
    if patch == "torchao":
        monkeypatch.setattr(cpu_support.importlib.util, "find_spec", lambda name: None)
    elif patch == "isa":
        monkeypatch.setattr(cpu_support.torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    else:
        monkeypatch.setattr(cpu_support.shutil, "which", lambda name: None)
        monkeypatch.setattr(cpu_support.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        monkeypatch.setattr(cpu_support.platform, "machine", lambda: "x86_64")
    with pytest.raises(QuantizationUnsupported, match=message) as caught:
        cpu_support.check_cpu_support()
    assert "\n" not in str(caught.value) and "float32 model" in str(caught.value)


def test_quantize_is_a_public_name():
    assert models.quantize is quantize
    assert "quantize" in models.__all__


@pytest.mark.skipif(not os.environ.get("QUANTIZATION_COMPILE_TEST"), reason="compiles with inductor (a minute or more); QUANTIZATION_COMPILE_TEST=1 runs it")
def test_the_compiled_int8_graph_computes_what_the_eager_one_does(quantized):
    family, _, int8 = quantized
    if family == "dino":
        pytest.skip("one family is enough for the compiled path")
    cpu_support.check_cpu_support()
    compiled = QuantizedDetector(int8.graph, int8.config, int8.fields, int8.canvas, int8.recipe, compile=True)
    pixel_values = images(2, seed=15)
    expected, actual = int8(pixel_values=pixel_values), compiled(pixel_values=pixel_values)
    spread = expected.logits.std()
    assert (actual.logits - expected.logits).abs().max() <= 0.05 * spread


def test_quantize_to_folder_reads_image_files_and_saves_what_detect_loads(tiny_checkpoint, tmp_path, msda_cpu_library):
    from PIL import Image

    from models.processing.image_processing import DeformableDetrImageProcessor
    from models.quantization import quantize_to_folder

    model = models.DeformableDetrForObjectDetection.from_pretrained(tiny_checkpoint).eval()
    processor = DeformableDetrImageProcessor.from_pretrained(tiny_checkpoint)
    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray((torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()).save(path)
        paths.append(str(path))
    with pytest.raises(ValueError, match="images: expected a non-empty list"):
        quantize_to_folder(model, processor, [], tmp_path / "none")
    int8 = quantize_to_folder(model, processor, paths, tmp_path / "int8", compile=False)
    assert is_quantized_checkpoint(tmp_path / "int8") and (tmp_path / "int8" / "preprocessor_config.json").is_file()
    inputs = DeformableDetrImageProcessor.from_pretrained(tmp_path / "int8")(images=[Image.open(paths[0])], return_tensors="pt")
    assert int8(**inputs).logits.shape == (1, model.config.num_queries, model.config.num_labels)
