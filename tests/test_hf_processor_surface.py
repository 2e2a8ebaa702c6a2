"""The image processors' ``transformers`` surface, call by call against ``transformers`` 4.57.6.

One table of ``(call, expected behaviour)``: each call runs once with ``transformers``' classes and once with
ours (the same code, only the classes differ). Expected behaviour per side: ``OK`` (no warning), ``WARN``
(a warning: ``warnings.warn`` here, a ``logging`` warning in ``transformers``) or an exception class. When both
sides return, the results must agree to 1e-4 (tensors, arrays, PIL images, nested dicts/lists/tuples).
Where the two sides are expected to differ (a keyword ``transformers`` silently absorbs and we warn about),
the table says so in the row.

Covers issue 16: ``pad`` / ``resize`` / ``rescale`` / ``normalize`` (item 6), LANCZOS in the fast processor,
the fast constructor's default-able options (``device``, ``return_segmentation_masks``, ``do_convert_rgb``,
``input_data_format``, ...), unknown keywords warned about, and ``from_pretrained`` by Hub repo id offline
from a fake Hugging Face cache (item 1, processor half).
"""

from __future__ import annotations

import json
import logging
import os
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch

transformers = pytest.importorskip("transformers")
from torchvision.transforms.v2 import InterpolationMode  # noqa: E402
from transformers.image_utils import PILImageResampling, SizeDict  # noqa: E402

from models.processing.image_processing import DeformableDetrImageProcessor  # noqa: E402
from models.processing.image_processing_fast import DeformableDetrImageProcessorFast, lanczos_resize  # noqa: E402

OURS = types.SimpleNamespace(name="ours", Slow=DeformableDetrImageProcessor, Fast=DeformableDetrImageProcessorFast)
THEIRS = types.SimpleNamespace(
    name="transformers", Slow=transformers.DeformableDetrImageProcessor, Fast=transformers.DeformableDetrImageProcessorFast
)
OK, WARN = "ok", "warn"
TOL = 1e-4
REPO = "tiny-org/tiny-detr-processor"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SMALL = {"shortest_edge": 24, "longest_edge": 40}


def _rgb(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _target(boxes: list[list[float]], with_masks: bool = False, height: int = 20, width: int = 30) -> dict[str, Any]:
    """A model-format annotation (what ``prepare_annotation`` gives) for the ``pad`` methods."""
    target = {
        "boxes": np.asarray(boxes, dtype=np.float32),
        "class_labels": np.arange(len(boxes), dtype=np.int64),
        "size": np.asarray([height, width], dtype=np.int64),
    }
    if with_masks:
        masks = np.zeros((len(boxes), height, width), dtype=np.float32)
        masks[:, 2:9, 3:12] = 1
        target["masks"] = masks
    return target


def _torch_target(target: dict[str, Any]) -> dict[str, Any]:
    return {key: torch.as_tensor(value) for key, value in target.items()}


COCO = {
    "image_id": 7,
    "annotations": [
        {"bbox": [2.0, 3.0, 10.0, 8.0], "category_id": 1, "area": 80.0, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"bbox": [15.0, 1.0, 9.0, 12.0], "category_id": 4, "area": 108.0, "iscrowd": 0,
         "segmentation": [[15, 1, 24, 1, 24, 13, 15, 13]]},
    ],
}


@dataclass(frozen=True)
class Case:
    """``call(lib, ctx)`` runs with ``lib`` = OURS or THEIRS; ``theirs`` / ``ours``: expected outcome."""

    id: str
    call: Callable[[types.SimpleNamespace, types.SimpleNamespace], Any]
    theirs: Any = OK
    ours: Any = OK
    hub: bool = False  # needs the fake cache and HF_HUB_OFFLINE=1

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def _preprocess(cls_name: str, ctor: dict[str, Any], image: Any = None, **call: Any) -> Callable:
    def run(lib: types.SimpleNamespace, ctx: types.SimpleNamespace) -> Any:
        processor = getattr(lib, cls_name)(**ctor)
        return processor(_rgb() if image is None else image, return_tensors="pt", **call)
    return run


def _rgba() -> PIL.Image.Image:
    array = np.concatenate([_rgb(), np.full((20, 30, 1), 200, dtype=np.uint8)], axis=2)
    return PIL.Image.fromarray(array, mode="RGBA")


CASES = [
    # ---- slow: resize / rescale / normalize / pad ---------------------------------------------------------
    Case("slow-resize-shortest-edge", lambda lib, ctx: lib.Slow().resize(_rgb(), SMALL)),
    Case("slow-resize-height-width-lanczos-chw", lambda lib, ctx: lib.Slow().resize(
        _rgb().transpose(2, 0, 1), {"height": 11, "width": 13}, resample=PILImageResampling.LANCZOS)),
    Case("slow-resize-float01-to-channels-last", lambda lib, ctx: lib.Slow().resize(
        (_rgb().transpose(2, 0, 1) / 255.0).astype(np.float32), {"max_height": 15, "max_width": 15},
        data_format="channels_last", input_data_format="channels_first")),
    Case("slow-resize-unknown-keyword", lambda lib, ctx: lib.Slow().resize(_rgb(), SMALL, colour=1),
         theirs=TypeError, ours=TypeError),
    Case("slow-rescale-to-channels-first", lambda lib, ctx: lib.Slow().rescale(
        _rgb(), 1 / 255, data_format="channels_first")),
    Case("slow-rescale-unknown-keyword", lambda lib, ctx: lib.Slow().rescale(_rgb(), 0.5, colour=1),
         theirs=TypeError, ours=TypeError),
    Case("slow-normalize-uint8-chw", lambda lib, ctx: lib.Slow().normalize(
        _rgb().transpose(2, 0, 1), [100.0, 120.0, 90.0], [50.0, 60.0, 70.0])),
    Case("slow-normalize-float-scalar-stats", lambda lib, ctx: lib.Slow().normalize(
        _rgb().astype(np.float32) / 255, 0.5, 0.25, data_format="channels_first")),
    Case("slow-normalize-wrong-mean-length", lambda lib, ctx: lib.Slow().normalize(_rgb(), [1.0, 2.0], [1.0, 1.0, 1.0]),
         theirs=ValueError, ours=ValueError),
    Case("slow-pad-annotations-pt", lambda lib, ctx: lib.Slow().pad(
        [_rgb().transpose(2, 0, 1).astype(np.float32), _rgb(14, 33, 1).transpose(2, 0, 1).astype(np.float32)],
        annotations=[_target([[0.5, 0.5, 0.2, 0.4]], True), _target([[0.3, 0.6, 0.1, 0.1]], True, 14, 33)],
        return_tensors="pt", constant_values=3)),
    Case("slow-pad-no-mask-layout-pad-size", lambda lib, ctx: lib.Slow().pad(
        [_rgb(), _rgb(14, 33, 1)], return_pixel_mask=False, data_format="channels_first",
        pad_size={"height": 25, "width": 40}, annotations=[_target([[0.5, 0.5, 0.2, 0.4]]), _target([[0.1, 0.1, 0.1, 0.1]])],
        update_bboxes=False)),
    Case("slow-pad-default-pad-size-from-processor", lambda lib, ctx: lib.Slow(pad_size={"height": 22, "width": 31}).pad(
        [_rgb()], return_tensors="np")),
    Case("slow-pad-unknown-keyword", lambda lib, ctx: lib.Slow().pad([_rgb()], colour=1), theirs=TypeError, ours=TypeError),
    # ---- fast: resize / rescale / normalize / pad ---------------------------------------------------------
    Case("fast-resize-sizedict", lambda lib, ctx: lib.Fast().resize(
        torch.from_numpy(_rgb()).permute(2, 0, 1).contiguous(), SizeDict(**SMALL))),
    Case("fast-resize-lanczos-float-batch", lambda lib, ctx: lib.Fast().resize(
        torch.from_numpy(_rgb()).permute(2, 0, 1)[None].float() / 255, SizeDict(height=11, width=45),
        interpolation=InterpolationMode.LANCZOS)),
    Case("fast-resize-unknown-keyword", lambda lib, ctx: lib.Fast().resize(
        torch.zeros(3, 8, 8), SizeDict(height=4, width=4), colour=1), theirs=TypeError, ours=TypeError),
    Case("fast-rescale", lambda lib, ctx: lib.Fast().rescale(torch.from_numpy(_rgb()).permute(2, 0, 1), 1 / 255)),
    Case("fast-normalize", lambda lib, ctx: lib.Fast().normalize(
        torch.from_numpy(_rgb()).permute(2, 0, 1).float(), [100.0, 120.0, 90.0], [50.0, 60.0, 70.0])),
    Case("fast-pad-annotation", lambda lib, ctx: lib.Fast().pad(
        torch.from_numpy(_rgb()).permute(2, 0, 1).float(), (25, 41),
        annotation=_torch_target(_target([[0.5, 0.5, 0.2, 0.4]], True)), fill=2)),
    Case("fast-pad-same-size", lambda lib, ctx: lib.Fast().pad(torch.ones(3, 20, 30), (20, 30))),
    Case("fast-pad-too-small", lambda lib, ctx: lib.Fast().pad(torch.ones(3, 20, 30), (10, 30)),
         theirs=ValueError, ours=ValueError),
    # ---- LANCZOS in the fast processor (the enum, PIL's constant, the int) --------------------------------
    Case("fast-lanczos-enum", _preprocess("Fast", dict(size=SMALL), resample=PILImageResampling.LANCZOS)),
    Case("fast-lanczos-pil-constant-ctor", _preprocess("Fast", dict(size=SMALL, resample=PIL.Image.LANCZOS))),
    Case("fast-lanczos-int-upscale", _preprocess("Fast", dict(size={"height": 37, "width": 51}, resample=1))),
    Case("slow-lanczos", _preprocess("Slow", dict(size=SMALL, resample=1))),
    # ---- the fast constructor's default-able options ------------------------------------------------------
    Case("fast-ctor-device", _preprocess("Fast", dict(size=SMALL, device="cpu"))),
    Case("fast-ctor-return-segmentation-masks", _preprocess(
        "Fast", dict(size=SMALL, return_segmentation_masks=True), annotations=COCO)),
    Case("fast-ctor-do-convert-rgb", _preprocess("Fast", dict(size=SMALL, do_convert_rgb=True), image=_rgba())),
    Case("fast-ctor-input-data-format", _preprocess(
        "Fast", dict(size=SMALL, input_data_format="channels_first"), image=_rgb().transpose(2, 0, 1).copy())),
    Case("fast-ctor-default-to-square", _preprocess("Fast", dict(default_to_square=True), size=21)),
    Case("fast-ctor-return-tensors-disable-grouping", lambda lib, ctx: lib.Fast(
        size=SMALL, return_tensors="pt", disable_grouping=True, data_format="channels_first")(_rgb())),
    Case("fast-ctor-data-format-last", _preprocess("Fast", dict(size=SMALL, data_format="channels_last")),
         theirs=ValueError, ours=ValueError),
    Case("fast-call-return-tensors-np", lambda lib, ctx: lib.Fast(size=SMALL)(_rgb(), return_tensors="np"),
         theirs=ValueError, ours=ValueError),
    # transformers absorbs these silently (center crop is never applied by its Deformable DETR processors);
    # we accept them too, with a warning saying they have no effect.
    Case("fast-ctor-center-crop-ignored", _preprocess(
        "Fast", dict(size=SMALL, do_center_crop=True, crop_size={"height": 5, "width": 5})), ours=WARN),
    Case("fast-call-center-crop-ignored", _preprocess(
        "Fast", dict(size=SMALL), do_center_crop=True, crop_size={"height": 5, "width": 5}), ours=WARN),
    # ---- unknown keywords: transformers sets them as attributes (constructor) or logs (preprocess) ---------
    Case("fast-ctor-unknown-keyword", _preprocess("Fast", dict(size=SMALL, colour=1)), ours=WARN),
    Case("slow-ctor-unknown-keyword", _preprocess("Slow", dict(size=SMALL, colour=1)), ours=WARN),
    Case("slow-ctor-fast-only-option", _preprocess("Slow", dict(size=SMALL, device="cpu")), ours=WARN),
    Case("fast-call-unknown-keyword", _preprocess("Fast", dict(size=SMALL), colour=1), theirs=WARN, ours=WARN),
    Case("slow-call-unknown-keyword", _preprocess("Slow", dict(size=SMALL), colour=1), theirs=WARN, ours=WARN),
    Case("slow-call-fast-only-keyword", _preprocess("Slow", dict(size=SMALL), device="cpu"), theirs=WARN, ours=WARN),
    # ---- from_pretrained by Hub repo id, offline, from a fake HF cache -------------------------------------
    Case("hub-repo-id", lambda lib, ctx: lib.Fast.from_pretrained(REPO, cache_dir=ctx.cache)(_rgb()), hub=True),
    Case("hub-repo-id-slow-revision", lambda lib, ctx: lib.Slow.from_pretrained(
        REPO, cache_dir=ctx.cache, revision="v-small")(_rgb(), return_tensors="pt"), hub=True),
    Case("hub-repo-id-local-files-only-override", lambda lib, ctx: lib.Fast.from_pretrained(
        REPO, cache_dir=ctx.cache, local_files_only=True, do_normalize=False)(_rgb()), hub=True),
    Case("hub-repo-id-not-cached", lambda lib, ctx: lib.Fast.from_pretrained("tiny-org/absent", cache_dir=ctx.cache),
         theirs=OSError, ours=OSError, hub=True),
]


# ---- running a call and comparing -------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run(case: Case, lib: types.SimpleNamespace, ctx: types.SimpleNamespace) -> tuple[Any, Any, list[str]]:
    """(outcome, result, warning messages): outcome is OK, WARN or the exception class raised."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = case.call(lib, ctx)
            except Exception as error:  # the category is compared below
                return type(error), error, []
    finally:
        logger.removeHandler(handler)
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    messages += handler.messages
    return (WARN if messages else OK), result, messages


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, PIL.Image.Image):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Mapping):  # BatchFeature: a dict here, a UserDict in transformers
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _assert_close(ours: Any, theirs: Any, where: str = "result") -> None:
    if theirs is None:
        assert ours is None, f"{where}: {ours!r} is not None"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{where}: keys {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            _assert_close(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list) and not (isinstance(ours, np.ndarray)):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: {type(ours)} vs list of {len(theirs)}"
        for index, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(a, b, f"{where}[{index}]")
    else:
        a, b = np.asarray(ours), np.asarray(theirs)
        assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
        assert a.dtype.kind == b.dtype.kind or {a.dtype.kind, b.dtype.kind} <= {"i", "u"}, f"{where}: {a.dtype} vs {b.dtype}"
        if a.size:
            difference = np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
            assert difference <= TOL, f"{where}: max difference {difference}"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> types.SimpleNamespace:
    """A fake HF cache holding ``REPO`` at ``main`` and at ``v-small`` (a config saved by transformers)."""
    root = tmp_path_factory.mktemp("processor_hub")
    cache = root / "hub"
    folder = cache / ("models--" + REPO.replace("/", "--"))
    for ref, commit, options in (
        ("main", COMMIT, dict(size=SMALL, resample=1)),
        ("v-small", COMMIT[::-1], dict(size={"height": 16, "width": 18}, image_mean=[0.5, 0.5, 0.5])),
    ):
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        transformers.DeformableDetrImageProcessorFast(**options).save_pretrained(str(snapshot))
        assert json.loads((snapshot / "preprocessor_config.json").read_text())["size"]
    return types.SimpleNamespace(cache=str(cache))


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_surface_matches_transformers(case: Case, ctx: types.SimpleNamespace, monkeypatch) -> None:
    if case.hub:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    theirs, their_result, their_messages = _run(case, THEIRS, ctx)
    ours, our_result, our_messages = _run(case, OURS, ctx)
    assert theirs == case.theirs, f"transformers: expected {case.theirs}, got {theirs}: {their_result!r} {their_messages}"
    assert ours == case.ours, f"ours: expected {case.ours}, got {ours}: {our_result!r} {our_messages}"
    if isinstance(ours, type):
        return
    if ours == WARN:  # a warning names the keyword it is about
        assert any(name in " ".join(our_messages) for name in ("colour", "device", "do_center_crop")), our_messages
    _assert_close(_plain(our_result), _plain(their_result))


def test_lanczos_fallback_matches_torchvision() -> None:
    """The pure-torch LANCZOS used where torch lacks it agrees with torchvision's (measured here: < 3e-6)."""
    from torchvision.transforms.v2 import functional as TF

    image = torch.rand(2, 3, 21, 34, generator=torch.Generator().manual_seed(0))
    for size in [(13, 17), (40, 50), (21, 7)]:
        expected = TF.resize(image, list(size), interpolation=InterpolationMode.LANCZOS, antialias=True)
        assert (lanczos_resize(image, size) - expected).abs().max().item() < 1e-5
    uint8 = (image * 255).to(torch.uint8)
    expected = TF.resize(uint8, [13, 17], interpolation=InterpolationMode.LANCZOS, antialias=True)
    assert (lanczos_resize(uint8, (13, 17)).int() - expected.int()).abs().max().item() <= 1


def test_keyword_table_round_trip(tmp_path) -> None:
    """Honoured constructor options are saved and loaded back; unset ones are left out of the file."""
    processor = DeformableDetrImageProcessorFast(device="cpu", return_segmentation_masks=True, do_convert_rgb=True)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["device"] == "cpu" and saved["do_convert_rgb"] is True and "input_data_format" not in saved
    loaded = DeformableDetrImageProcessorFast.from_pretrained(tmp_path)
    assert loaded.device == torch.device("cpu") and loaded.return_segmentation_masks is True
    with pytest.raises(ValueError, match="device"):
        DeformableDetrImageProcessorFast(device=3.5)


def test_hub_offline_error_says_what_to_download(ctx, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="preprocessor_config.json.*huggingface-cli download"):
        DeformableDetrImageProcessor.from_pretrained("tiny-org/absent", cache_dir=ctx.cache)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
