"""README.md is tested code: its Python blocks run, its shell blocks marked ``<!-- doc-test: run -->`` run
(with smaller sizes, below), and every other shell line is a known command that parses."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.cli.main import build_parser, main
from tests.doc_examples import README, Command, run_page, shell_blocks

ROOT = README.parent
TEXT = README.read_text(encoding="utf-8")
BLOCKS = shell_blocks(TEXT)

# what the run blocks get appended, so that they take seconds (the README says so next to the recipe)
SMALLER = {
    "make-data": ["--train", "16", "--val", "4"],
    "train": ["--epochs", "1", "--max-steps-per-epoch", "2"],
    "demo": ["--test-images", "20", "--num-images", "2"],
}

HUB_IDS = {
    "SenseTime/deformable-detr",
    "SenseTime/deformable-detr-with-box-refine",
    "SenseTime/deformable-detr-with-box-refine-two-stage",
    "SenseTime/deformable-detr-single-scale",
    "SenseTime/deformable-detr-single-scale-dc5",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ python
_DETECTION_LINE = re.compile(r"^(\w+) +([0-9.]+) \[([-0-9., ]+)\]$", re.MULTILINE)


def _printed_detections(text: str) -> list[tuple[str, float, list[float]]]:
    """The ``label score [x0, y0, x1, y1]`` lines of ``text`` (other lines are ignored)."""
    return [(m.group(1), float(m.group(2)), [float(v) for v in m.group(3).split(",")]) for m in _DETECTION_LINE.finditer(text)]


def test_python_examples_run_and_the_demo_detector_finds_the_objects(capsys):
    namespace = run_page(README)
    printed = _printed_detections(capsys.readouterr().out)
    # the ```text block right after the detection example is what it prints
    expected = re.search(r"post_process_object_detection.*?```\n.*?```text\n(.*?)```", TEXT, re.DOTALL).group(1)
    documented = _printed_detections(expected)
    assert len(documented) == len(expected.strip().splitlines()) == 2
    assert [r[0] for r in printed] == [r[0] for r in documented]
    for (_, score, box), (_, doc_score, doc_box) in zip(printed, documented):
        assert score == pytest.approx(doc_score, abs=0.011)
        assert box == pytest.approx(doc_box, abs=1.01)
    # and what it finds is what the image holds: one detection per object, with the object's class
    names = namespace["model"].config.id2label
    assert sorted(names[o.label] for o in namespace["objects"]) == sorted(r[0] for r in printed)
    assert namespace["hf_model"].__class__.__module__.startswith("transformers")


# ------------------------------------------------------------------------------------------- shell
def _version_ok(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    return metadata.version(name).split("+")[0] == version


def _check_cli(argv: list[str], line: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_info:  # --version and --help exit 0; a parse error exits 2
        assert exit_info.code == 0, f"README line does not parse: {line}"


def check_command(command: Command) -> None:
    """Fail unless ``command`` is one the README may show, and it is right as far as can be checked here."""
    argv, line = command.argv, command.line
    program = argv[0]
    if program == "deformable-detr":
        _check_cli(argv[1:], line)
    elif program == "torchrun":  # the installed command, never `-m models` (a user's models.py can shadow it)
        assert "--no-python" in argv and "-m" not in argv and "deformable-detr" in argv, line
        _check_cli(argv[argv.index("deformable-detr") + 1 :], line)
    elif program == "pip":
        assert argv[1] == "install", line
        requirements = argv[2:]
        if "--index-url" in requirements:  # only torch's own CPU-only wheel index
            at = requirements.index("--index-url")
            assert requirements[at + 1] == "https://download.pytorch.org/whl/cpu", line
            requirements = requirements[:at] + requirements[at + 2 :]
        for requirement in requirements:
            if requirement.startswith("."):
                extra = re.fullmatch(r"\.(?:\[(\w+)\])?", requirement)
                assert extra, line
                assert extra.group(1) in (None, *re.findall(r'"(\w+)": \[', (ROOT / "setup.py").read_text())), line
            elif "==" in requirement:
                assert _version_ok(requirement), f"{requirement} is not what the project is tested with: {line}"
            else:
                assert requirement == "huggingface_hub", line
    elif program == "python":
        assert argv[1:3] == ["-m", "pytest"] and (ROOT / argv[-1]).is_dir(), line
    elif program == "hf":
        assert argv[1] == "download" and argv[2] in HUB_IDS and "--local-dir" in argv, line
        hf = shutil.which("hf", path=str(Path(sys.executable).parent))
        if hf is None:
            pytest.skip("huggingface_hub (the hf command) is not installed here")
    else:
        raise AssertionError(f"README shows a command the test does not know: {line}")


def test_every_shell_line_is_known_and_parses():
    commands = [command for block in BLOCKS for command in block.commands]
    assert len(commands) >= 15
    for command in commands:
        check_command(command)


def test_the_run_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = []
    for block in BLOCKS:
        if "run" not in block.marker:
            continue
        for command in block.commands:
            assert command.argv[0] == "deformable-detr" and not command.env, command.line
            argv = command.argv[1:] + SMALLER.get(command.argv[1], [])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert main(argv) == 0, command.line
            ran.append(command.argv[1])
    assert ran == ["demo", "detect", "make-data", "train", "eval", "detect"]
    out = capsys.readouterr().out
    assert "mAP@0.5" in out and re.search(r"\[1/20\] demo_out/data/images/test/000000.png: \d+ detections? \(", out)
    assert json.loads(Path("demo_out/metrics.json").read_text())["passed"] is True
    assert len(list(Path("demo_detections").glob("*.png"))) == 20
    assert {"AP", "AP50"} <= set(json.loads(Path("my_run/eval/metrics.json").read_text()))
    assert len(list(Path("my_detections").glob("*.json"))) == 4


def test_the_real_weights_detect_line_runs_on_a_folder_in_the_hub_layout(tmp_path, monkeypatch):
    """The README's `detect` line for the downloaded SenseTime checkpoint, run as written on a folder that
    `transformers` writes in the same layout (a tiny random model: the real one needs the network)."""
    transformers = pytest.importorskip("transformers")
    (line,) = [c for b in BLOCKS for c in b.commands
               if c.argv[:2] == ["deformable-detr", "detect"] and any(a.startswith("weights/") for a in c.argv)]
    folder = tmp_path / line.argv[line.argv.index("--checkpoint") + 1]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.DeformableDetrConfig(backbone="resnet18", use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                                                   decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                                   decoder_attention_heads=2, num_queries=10, num_labels=3)
        transformers.DeformableDetrForObjectDetection(config).save_pretrained(folder)
        transformers.DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    photo = line.argv[2]
    Image.new("RGB", (96, 64), (120, 80, 40)).save(photo)
    assert main(line.argv[1:]) == 0
    out = Path(line.argv[line.argv.index("--out") + 1])
    record = json.loads((out / f"{Path(photo).stem}.json").read_text())
    assert (record["width"], record["height"]) == (96, 64)
