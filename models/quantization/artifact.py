"""The saved int8 detector: a folder that ``deformable-detr detect`` and ``eval`` can load.

Layout::

    DIR/
      config.json               the float model's config, plus a "quantization" section (below)
      int8_program.pt2          torch.export.save of the int8 graph: int8 weights, scales and
                                zero points inside; (pixel_values [B, 3, H, W], pixel_mask [B, H, W])
                                -> {field: Tensor} at the canvas H x W, batch size dynamic
      preprocessor_config.json  the image processor's settings, when one was given to save_quantized

The "quantization" section of ``config.json``: ``format`` (:data:`FORMAT`), ``version``, ``program``
(the file name), ``fields`` (the output fields, in order), ``canvas`` ([H, W]), ``recipe``
(:meth:`QuantizationRecipe.to_dict`), and for the record ``torch``/``torchao`` versions and the CPU it was made on.
Loading needs the same torch minor version (``torch.export`` programs are not promised to load across
versions) and ``import msda`` (the graph calls ``torch.ops.msda.ms_deform_attn``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from models.quantization.calibrate import model_inputs
from models.quantization.cpu_support import isa_summary
from models.quantization.detector import QuantizedDetector
from models.quantization.export import export_detector
from models.quantization.recipe import QuantizationRecipe

FORMAT = "deformable-detr-int8"
VERSION = 1
CONFIG_FILE = "config.json"
PROGRAM_FILE = "int8_program.pt2"


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_quantized` (its ``config.json`` has a
    ``quantization`` section); False for float checkpoints and for anything else."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return isinstance(json.loads(config.read_text(encoding="utf-8")).get("quantization"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def save_quantized(detector: QuantizedDetector, directory: str | os.PathLike, processor: Any | None = None) -> Path:
    """Write ``detector`` to ``directory`` (created; files of the same names are replaced).

    ``processor`` (the model's image processor, optional) is saved beside it with
    ``save_pretrained`` so that ``detect``/``eval`` resize images as the model expects. Returns the folder.
    """
    if not isinstance(detector, QuantizedDetector):
        raise TypeError(f"detector: expected a QuantizedDetector (from models.quantize), got {type(detector).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory: {str(directory)!r} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    import torchao

    example = model_inputs(torch.zeros(1, 3, *detector.canvas))
    torch.export.save(export_detector(detector.graph, example), directory / PROGRAM_FILE)
    config = detector.config.to_dict()
    config["quantization"] = {
        "format": FORMAT,
        "version": VERSION,
        "program": PROGRAM_FILE,
        "fields": list(detector.fields),
        "canvas": list(detector.canvas),
        "recipe": detector.recipe.to_dict(),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "made_on": isa_summary(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if processor is not None:
        processor.save_pretrained(str(directory))
    return directory


def load_quantized(directory: str | os.PathLike, compile: bool = True) -> QuantizedDetector:
    """The :class:`QuantizedDetector` saved in ``directory`` by :func:`save_quantized`.

    ``compile=False`` runs the graph eagerly (no C++ compiler needed; slow). Raises ``ValueError``
    naming ``directory`` when it is not such a folder or was written by another format version.
    """
    directory = Path(directory)
    if not is_quantized_checkpoint(directory):
        raise ValueError(f"directory: {str(directory)!r} is not a quantized detector (no {CONFIG_FILE} with a 'quantization' section)")
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    section = config.pop("quantization")
    if section.get("format") != FORMAT or section.get("version") != VERSION:
        raise ValueError(f"directory: {str(directory)!r} holds format {section.get('format')!r} version {section.get('version')!r}; this library reads {FORMAT!r} version {VERSION}")
    saved_torch, running_torch = section["torch"].split(".")[:2], torch.__version__.split(".")[:2]
    if saved_torch != running_torch:
        raise ValueError(f"directory: {str(directory)!r} was saved with torch {section['torch']}; this is torch {torch.__version__}: quantize the float model again")
    import msda  # noqa: F401  (registers torch.ops.msda.ms_deform_attn, which the graph calls)
    from models.registry import config_from_dict  # the family's config class, from the config's architectures/model_type

    program = torch.export.load(directory / section["program"])
    return QuantizedDetector(
        program.module(),
        config_from_dict(config),
        section["fields"],
        tuple(section["canvas"]),
        QuantizationRecipe.from_dict(section["recipe"]),
        compile=compile,
    )
