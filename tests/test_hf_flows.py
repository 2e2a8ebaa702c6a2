"""Issue 16: the flows of a ``transformers`` user, run twice: once with ``transformers``' classes and
once with ours imported in their place. One table of ``(call, expected behaviour)`` drives them.

Each call takes ``lib`` (the names a user imports) and ``ctx`` (paths of checkpoints written for
the test: a local directory and a fake Hugging Face cache, used with ``HF_HUB_OFFLINE=1``). The
expected behaviour is one of:

- ``"same"``: both libraries return equal results (tensors to 1e-4, outputs field by field);
- ``"raises:<Error>"``: both raise that error type;
- ``"ours"``: a check of our behaviour alone (where ``transformers`` has no counterpart or is the
  thing being fixed), the call asserts itself and returns None.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

import models
from models import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrModel

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

TINY = dict(
    backbone="resnet18", use_pretrained_backbone=False, backbone_kwargs={"out_indices": [2, 3], "in_chans": 3},
    num_feature_levels=2, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8, two_stage_num_proposals=8, encoder_n_points=2, decoder_n_points=2,
    num_labels=3, dropout=0.0,
)
VARIANTS = {"plain": {}, "two_stage": {"with_box_refine": True, "two_stage": True}}
REPO = "tiny-org/tiny-deformable-detr"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

OURS = types.SimpleNamespace(name="ours", Config=DeformableDetrConfig, Model=DeformableDetrModel, Detector=DeformableDetrForObjectDetection)
THEIRS = types.SimpleNamespace(
    name="transformers", Config=transformers.DeformableDetrConfig, Model=transformers.DeformableDetrModel,
    Detector=transformers.DeformableDetrForObjectDetection,
)


def _quiet(function: Callable, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _fake_cache(cache: str, checkpoint: str, repo: str = REPO, ref: str = "main") -> None:
    """The layout ``huggingface_hub`` keeps: refs/<ref> holds the commit, snapshots/<commit>/ the files."""
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", ref), "w") as handle:
        handle.write(COMMIT)
    snapshot = os.path.join(folder, "snapshots", COMMIT)
    os.makedirs(snapshot, exist_ok=True)
    for name in os.listdir(checkpoint):
        with open(os.path.join(checkpoint, name), "rb") as source, open(os.path.join(snapshot, name), "wb") as target:
            target.write(source.read())


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> types.SimpleNamespace:
    """Checkpoints with random weights (every weight perturbed so that each one matters)."""
    root = tmp_path_factory.mktemp("hf_flows")
    paths = {}
    for variant, changes in VARIANTS.items():
        torch.manual_seed(0)
        model = models.deformable_detr(**{**TINY, **changes})
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        paths[variant] = str(root / variant)
        model.save_pretrained(paths[variant])
    cache = str(root / "hub-cache")
    _fake_cache(cache, paths["two_stage"])
    _fake_cache(cache, paths["plain"], ref="v-plain")  # another revision of the same repo
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 64, 96)
    pixel_mask = torch.ones(2, 64, 96, dtype=torch.long)
    pixel_mask[1, 40:] = 0
    return types.SimpleNamespace(dirs=paths, cache=cache, empty_cache=str(root / "empty-cache"), pixel_values=pixel_values, pixel_mask=pixel_mask)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for us (read at call time) and for transformers (read at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _run(model: torch.nn.Module, ctx: types.SimpleNamespace, **flags: Any) -> Any:
    with torch.no_grad():
        return model(pixel_values=ctx.pixel_values, pixel_mask=ctx.pixel_mask, **flags)


def _load(lib, path: str, **kwargs: Any) -> Any:
    return _quiet(lib.Detector.from_pretrained, path, **kwargs)


# ------------------------------------------------------------------------------------ the calls
def _ours_only(check: Callable[[types.SimpleNamespace], None]) -> Callable:
    def call(lib, ctx):
        if lib is OURS:
            check(ctx)

    return call


def _offline_missing_message(ctx):
    with pytest.raises(OSError, match="huggingface-cli download tiny-org/absent config.json"):
        DeformableDetrConfig.from_pretrained("tiny-org/absent", cache_dir=ctx.empty_cache)


def _absorbed_kwargs_are_not_written(ctx):
    model = DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"], torch_dtype=torch.float16, revision="main", local_files_only=True)
    assert not {"torch_dtype", "revision", "local_files_only"} & set(model.config.to_dict())
    model.config.to_json_string()  # JSON-serialisable


def _unknown_kwarg_named(ctx):
    with pytest.raises(TypeError, match="num_querys"):
        DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"], num_querys=5)
    with pytest.raises(NotImplementedError, match="quantization_config"):
        DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"], quantization_config={"bits": 4})


def _bare_model_report(ctx):
    with pytest.warns(UserWarning, match="class_embed"):
        model, report = DeformableDetrModel.from_pretrained(ctx.dirs["plain"], output_loading_info=True)
    assert any(key.startswith("class_embed") for key in report.unexpected_keys)
    assert not report.missing_keys


def _bare_round_trip(ctx):
    import tempfile

    model = _quiet(DeformableDetrModel.from_pretrained, ctx.dirs["plain"])
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        again = DeformableDetrModel.from_pretrained(folder)
        theirs = _quiet(transformers.DeformableDetrModel.from_pretrained, folder)
    a, b, c = _run(model, ctx), _run(again, ctx), _run(theirs, ctx)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state)
    torch.testing.assert_close(a.last_hidden_state, c.last_hidden_state, atol=1e-4, rtol=1e-4)


def _fast_path_without_flag(ctx):
    model = DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"])
    from msda import MultiScaleDeformableAttention

    attentions = [module for module in model.modules() if isinstance(module, MultiScaleDeformableAttention)]
    assert attentions and all(not module.use_reference for module in attentions)
    _run(model, ctx)
    _run(model, ctx, output_attentions=True)
    # no hook is left behind: the plain call runs exactly as before
    assert all(not module.attention_weights._forward_hooks for module in attentions)


def _config_from_transformers(ctx):
    theirs = transformers.DeformableDetrConfig.from_pretrained(ctx.dirs["plain"])
    model = DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"], config=theirs)
    assert model.config.d_model == TINY["d_model"]
    with pytest.raises(TypeError, match="DetrConfig"):
        DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"], config=transformers.DetrConfig())


def _tied_state_dict(ctx):
    model = DeformableDetrForObjectDetection.from_pretrained(ctx.dirs["plain"])
    state = model.state_dict()
    assert "class_embed.0.weight" in state and "class_embed.1.weight" not in state
    assert "class_embed.1.weight" in model.state_dict(keep_vars=True)
    model.load_state_dict(state)  # strict: the aliases are filled in


def _push_to_hub_exists(ctx):
    assert callable(DeformableDetrForObjectDetection.push_to_hub) and callable(DeformableDetrModel.push_to_hub)
    assert callable(DeformableDetrConfig.from_pretrained)


FLOWS: list[tuple[str, Callable, str]] = [
    # 1. Hub names
    ("hub repo id, offline, from the cache", lambda lib, ctx: _run(_load(lib, REPO, cache_dir=ctx.cache), ctx), "same"),
    ("hub repo id with revision", lambda lib, ctx: _run(_load(lib, REPO, cache_dir=ctx.cache, revision="v-plain"), ctx), "same"),
    ("hub config by repo id", lambda lib, ctx: lib.Config.from_pretrained(REPO, cache_dir=ctx.cache).d_model, "same"),
    ("hub local_files_only", lambda lib, ctx: _run(_load(lib, REPO, cache_dir=ctx.cache, local_files_only=True), ctx).logits, "same"),
    ("hub offline, not cached", lambda lib, ctx: _load(lib, "tiny-org/absent", cache_dir=ctx.empty_cache), "raises:OSError"),
    ("hub offline, message says what to download", _ours_only(_offline_missing_message), "ours"),
    ("push_to_hub exists", _ours_only(_push_to_hub_exists), "ours"),
    # 2. loading kwargs
    ("torch_dtype float16", lambda lib, ctx: next(_load(lib, ctx.dirs["plain"], torch_dtype=torch.float16).parameters()).dtype, "same"),
    ("dtype name", lambda lib, ctx: next(_load(lib, ctx.dirs["plain"], torch_dtype="bfloat16").parameters()).dtype, "same"),
    ("torch_dtype auto", lambda lib, ctx: next(_load(lib, ctx.dirs["plain"], torch_dtype="auto").parameters()).dtype, "same"),
    ("device_map cpu", lambda lib, ctx: next(_load(lib, ctx.dirs["plain"], device_map="cpu").parameters()).device, "same"),
    ("device_map torch.device", lambda lib, ctx: next(_load(lib, ctx.dirs["plain"], device_map=torch.device("cpu")).parameters()).device, "same"),
    ("ignore_mismatched_sizes", lambda lib, ctx: _run(_load(lib, ctx.dirs["plain"], num_labels=5, ignore_mismatched_sizes=True), ctx).pred_boxes.shape, "same"),
    ("config override", lambda lib, ctx: _load(lib, ctx.dirs["plain"], auxiliary_loss=True).config.auxiliary_loss, "same"),
    ("unknown kwarg", lambda lib, ctx: _load(lib, ctx.dirs["plain"], num_querys=5), "raises:TypeError"),
    ("unknown kwarg named; unsupported option refused", _ours_only(_unknown_kwarg_named), "ours"),
    ("loading options never reach config.json", _ours_only(_absorbed_kwargs_are_not_written), "ours"),
    # 3. the bare model
    ("bare model from a detection checkpoint", lambda lib, ctx: _run(_quiet(lib.Model.from_pretrained, ctx.dirs["plain"]), ctx), "same"),
    ("bare model reports the dropped heads", _ours_only(_bare_model_report), "ours"),
    ("bare model save_pretrained round trip (also into transformers)", _ours_only(_bare_round_trip), "ours"),
    # 4. config parity
    ("alias kwarg hidden_size", lambda lib, ctx: lib.Config(hidden_size=64).d_model, "same"),
    ("alias kwarg num_attention_heads", lambda lib, ctx: lib.Config(num_attention_heads=4).encoder_attention_heads, "same"),
    ("alias attribute write", lambda lib, ctx: (lambda c: (setattr(c, "hidden_size", 64), c.d_model)[1])(lib.Config()), "same"),
    ("alias attribute read", lambda lib, ctx: (lambda c: (c.hidden_size, c.num_attention_heads))(lib.Config(d_model=64, encoder_attention_heads=4)), "same"),
    ("output flags stored", lambda lib, ctx: (lambda c: (c.output_attentions, c.output_hidden_states, c.return_dict, c.use_return_dict))(
        lib.Config(output_attentions=True, output_hidden_states=True, return_dict=False)), "same"),
    ("config.output_hidden_states honoured", lambda lib, ctx: _run(_load(lib, ctx.dirs["two_stage"], output_hidden_states=True), ctx), "same"),
    ("config.return_dict=False honoured", lambda lib, ctx: _run(_load(lib, ctx.dirs["two_stage"], return_dict=False), ctx), "same"),
    ("config.output_attentions honoured", lambda lib, ctx: _run(_load(lib, ctx.dirs["two_stage"], output_attentions=True), ctx), "same"),
    ("call overrides config", lambda lib, ctx: _run(_load(lib, ctx.dirs["plain"], return_dict=False), ctx, return_dict=True), "same"),
    ("config= a transformers config", _ours_only(_config_from_transformers), "ours"),
    # 5. outputs
    ("return_dict=False", lambda lib, ctx: _run(_load(lib, ctx.dirs["plain"]), ctx, return_dict=False), "same"),
    ("return_dict=False, all flags, two-stage", lambda lib, ctx: _run(_load(lib, ctx.dirs["two_stage"]), ctx, return_dict=False,
                                                                      output_attentions=True, output_hidden_states=True), "same"),
    ("output_attentions=True", lambda lib, ctx: _run(_load(lib, ctx.dirs["plain"]), ctx, output_attentions=True), "same"),
    ("bare model, tuple with attentions", lambda lib, ctx: _run(_quiet(lib.Model.from_pretrained, ctx.dirs["plain"]), ctx,
                                                                return_dict=False, output_attentions=True), "same"),
    ("unpacking logits, boxes", lambda lib, ctx: tuple(_run(_load(lib, ctx.dirs["plain"]), ctx, return_dict=False)[:2]), "same"),
    ("no hooks without the flag; compiled op kept", _ours_only(_fast_path_without_flag), "ours"),
    # 7. shared heads and safetensors
    ("state_dict lists shared heads once", _ours_only(_tied_state_dict), "ours"),
]


def _as_comparable(value: Any) -> Any:
    if hasattr(value, "to_tuple") and not isinstance(value, torch.Tensor):
        return tuple(value.to_tuple())
    return value


def assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal structure; tensors within 1e-4 (non-finite entries in the same places)."""
    ours, theirs = _as_comparable(ours), _as_comparable(theirs)
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape and ours.dtype == theirs.dtype, where
        finite = torch.isfinite(theirs)
        assert torch.equal(finite, torch.isfinite(ours)), where
        torch.testing.assert_close(ours[finite].float(), theirs[finite].float(), atol=1e-4, rtol=1e-4, msg=where)
    elif isinstance(theirs, (tuple, list)):
        assert isinstance(ours, (tuple, list)) and len(ours) == len(theirs), f"{where}: {len(ours)} vs {len(theirs)} items"
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(theirs, Mapping):
        assert set(ours) == set(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif dataclasses.is_dataclass(theirs):
        assert_same(dataclasses.asdict(ours), dataclasses.asdict(theirs), where)
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


@pytest.mark.parametrize("name, call, expected", FLOWS, ids=[flow[0] for flow in FLOWS])
def test_flow(name, call, expected, ctx, offline):
    if expected == "ours":
        call(OURS, ctx)
        return
    if expected.startswith("raises:"):
        error = getattr(builtins, expected.split(":")[1])
        for lib in (THEIRS, OURS):
            with pytest.raises(error):
                call(lib, ctx)
        return
    assert expected == "same"
    theirs = call(THEIRS, ctx)
    ours = call(OURS, ctx)
    assert_same(ours, theirs, name)
