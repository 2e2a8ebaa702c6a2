"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """torch uses one thread during the test (small models train faster so, and 2-core machines are
    shared); the previous count is restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    """DeformableDetrConfig fields of a detector small enough to train for a few steps in a test:
    the demo detector (two-stage, box refinement, ResNet-18 cut after stage 2) made narrower."""
    from models.cli.demo import DEMO_MODEL_CONFIG  # here, not at the top: conftest must not import msda first

    return {**DEMO_MODEL_CONFIG, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 8,
            "two_stage_num_proposals": 8, "encoder_n_points": 2, "decoder_n_points": 2}


# --- msda: where tests build the compiled op (appended by the msda owner) --------------------------
# Tests never write to the user's ~/.cache/msda: builds go to one folder per checkout inside pytest's
# own cache (.pytest_cache/d/msda-build, cleared by `pytest --cache-clear`), reused by every test and
# every later session, so the suite compiles the op at most once. MSDA_TEST_CACHE_DIR overrides it.
# Set at conftest import, before any test module runs, and inherited by the subprocesses tests start.
# (An `import msda` that happens earlier only reads a cache, it never builds into one.)
def _msda_test_cache_dir() -> str:
    import os
    import tempfile
    from pathlib import Path

    chosen = os.environ.get("MSDA_TEST_CACHE_DIR")
    folder = Path(chosen) if chosen else Path(__file__).resolve().parents[1] / ".pytest_cache" / "d" / "msda-build"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".writable-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="msda-test-cache-"))
    return str(folder)


def _use_msda_test_cache() -> None:
    import os

    os.environ["MSDA_CACHE_DIR"] = _msda_test_cache_dir()


_use_msda_test_cache()


@pytest.fixture(scope="session")
def msda_cpu_library():
    """Path of the verified compiled library this process uses (built once if missing); it holds the
    CPU kernels (and the CUDA ones where torch sees a GPU)."""
    from msda import loader

    if not loader.is_compiled("cpu"):
        pytest.skip(f"the compiled op is not available here: {loader.active_implementation('cpu').reason}")
    return loader.loaded_library()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_config, tmp_path_factory):
    """A random tiny detector (``tiny_config``, classes circle/square/triangle) saved in the Hugging
    Face layout, with a ``preprocessor_config.json`` for 48-64 px images."""
    import torch

    from models import DeformableDetrConfig, DeformableDetrForObjectDetection
    from models.engine.training import make_processor

    path = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    config = DeformableDetrConfig(**tiny_config, id2label={0: "circle", 1: "square", 2: "triangle"})
    DeformableDetrForObjectDetection(config).save_pretrained(path)
    make_processor(48, 64).save_pretrained(path)
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A Hugging Face Hub cache in ``tmp_path`` (``HF_HUB_CACHE``) with ``HF_HUB_OFFLINE=1``;
    ``offline_hub(repo_id, folder)`` copies ``folder``'s files into it as the repo's ``main`` snapshot."""
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def add(repo_id: str, folder, commit: str = "0" * 40) -> None:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        shutil.copytree(folder, repo / "snapshots" / commit)

    return add


# --- the narrow ResNet of the reference fixtures (tests/fixtures/dino, tests/fixtures/hdetr) -------
def narrow_resnet_body(args: dict):
    """The backbone of the original-code fixtures (``args["fixture_backbone"]`` of their args.json):
    a torchvision Bottleneck ResNet with resnet50's module tree, one block per stage, stem ``w`` and
    planes ``w·2^i``, as a ``ResNetBody`` returning the stages the original model used (DINO:
    ``return_interm_indices``; Deformable DETR family: stages 2-4 when ``num_feature_levels > 1``,
    else stage 4; ``dilation``: last stage dilated). A plain function, imported by the parity tests."""
    from torch import nn
    from torchvision.models.resnet import Bottleneck, ResNet

    from models.backbones import ResNetBody  # here, not at the top: conftest must not import msda first

    width = int(args["fixture_backbone"]["stem_channels"])
    dilation = bool(args.get("dilation", False))
    network = ResNet(Bottleneck, [1, 1, 1, 1], norm_layer=nn.BatchNorm2d)
    network.inplanes, network.dilation = width, 1
    network.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    network.bn1 = nn.BatchNorm2d(width)
    network.layer1 = network._make_layer(Bottleneck, width, 1)
    for stage in (2, 3, 4):
        layer = network._make_layer(Bottleneck, width * 2 ** (stage - 1), 1, stride=2, dilate=dilation and stage == 4)
        setattr(network, f"layer{stage}", layer)
    if "return_interm_indices" in args:
        out_indices = [index + 1 for index in args["return_interm_indices"]]
    else:
        out_indices = [2, 3, 4] if args["num_feature_levels"] > 1 or args.get("masks") else [4]
    return ResNetBody("resnet50", out_indices, 16 if dilation else 32, 3, network=network)


# --- RT-DETR: tiny configurations with transformers' field names (shared by the rt_detr tests) ------
def tiny_rt_detr_fields(**overrides) -> dict:
    """``RTDetrConfig`` fields (ours and ``transformers``' alike) of an RT-DETR small enough for a
    test: a basic-block ResNet-vd of one block per stage, width 32, 2 decoder layers, 10 queries."""
    fields = {
        "backbone_config": {"model_type": "rt_detr_resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1],
                            "layer_type": "basic", "out_indices": [2, 3, 4]},
        "encoder_hidden_dim": 32, "encoder_in_channels": [32, 48, 64], "encoder_ffn_dim": 64, "encoder_attention_heads": 4,
        "d_model": 32, "decoder_in_channels": [32, 32, 32], "decoder_ffn_dim": 64, "decoder_layers": 2, "decoder_attention_heads": 4,
        "num_queries": 10, "num_labels": 3, "num_denoising": 0, "hidden_expansion": 0.5,
    }
    fields.update(overrides)
    return fields
