"""docs/models.md: the examples marked ``<!-- doc-test: run -->`` run as written (the first model run,
fine-tuning with ``transformers.Trainer``, ONNX and ``torch.export``), without a warning about the mode
of the exported module."""

from __future__ import annotations

import warnings

import pytest

from tests.doc_examples import DOCS, marked_python_blocks, run_marked_blocks

PAGE = DOCS / "models.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_marked_examples_are_the_ones_a_user_copies():
    blocks = marked_python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 3
    assert "transformers.Trainer(" in blocks[1] and "torch.onnx.export(" in blocks[2]


def test_the_marked_examples_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace = run_marked_blocks(PAGE)
    assert tuple(namespace["out"].logits.shape) == (1, 300, 20)
    assert (tmp_path / "run").is_dir() and (tmp_path / "final" / "config.json").is_file()
    assert "eval_loss" in namespace["metrics"]
    assert (tmp_path / "detector.onnx").is_file() and namespace["program"] is not None
    assert not [str(w.message) for w in caught if "training mode" in str(w.message)]
