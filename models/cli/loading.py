"""Model settings from the command line, devices, and loading a detector from any checkpoint it accepts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from models.cli.errors import CliError, read_json_file
from models.common.checkpoint_files import read_original_checkpoint
from models.ddetr import checkpoints
from models.ddetr.config import DeformableDetrConfig
from models.ddetr.modeling import DeformableDetrForObjectDetection
from models.ddetr.variants import variant_fields
from models.engine.training import MODEL_DIR, STATE_FILE, load_training_state, make_processor
from models.processing.image_processing import DeformableDetrImageProcessor

DEMO_CHECKPOINT_NAME = "demo"
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parent / "demo_checkpoint"
"""``--checkpoint demo`` is the demo detector shipped inside the installed package (wherever that is);
``./demo`` names a local folder called ``demo``."""

# command-line flag -> DeformableDetrConfig field
MODEL_FLAGS = {
    "backbone": "backbone",
    "pretrained_backbone": "use_pretrained_backbone",
    "num_feature_levels": "num_feature_levels",
    "d_model": "d_model",
    "enc_layers": "encoder_layers",
    "dec_layers": "decoder_layers",
    "heads": None,  # both encoder and decoder heads
    "ffn_dim": None,  # both encoder and decoder feed-forward widths
    "n_points": None,  # both encoder and decoder points
    "num_queries": None,  # queries and two-stage proposals
    "with_box_refine": "with_box_refine",
    "two_stage": "two_stage",
    "dilation": "dilation",
    "dropout": "dropout",
    "aux_loss": "auxiliary_loss",
}


def model_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """Config fields set by the model flags (only those given)."""
    out: dict[str, Any] = {}
    if getattr(ns, "variant", None):
        out.update(variant_fields(ns.variant))
    for flag, field in MODEL_FLAGS.items():
        value = getattr(ns, flag, None)
        if value is None:
            continue
        if flag == "heads":
            out["encoder_attention_heads"] = out["decoder_attention_heads"] = value
        elif flag == "ffn_dim":
            out["encoder_ffn_dim"] = out["decoder_ffn_dim"] = value
        elif flag == "n_points":
            out["encoder_n_points"] = out["decoder_n_points"] = value
        elif flag == "num_queries":
            out["num_queries"] = out["two_stage_num_proposals"] = value
        else:
            out[field] = value
    if getattr(ns, "out_indices", None):
        out["backbone_kwargs"] = {"out_indices": list(ns.out_indices), "in_chans": 3}
    return out


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine")
    return torch.device(name)


def load_detector(path: str, ns: argparse.Namespace | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load ``(model, processor)`` from any checkpoint the command line accepts.

    ``path`` may be a Hugging Face-layout folder (``config.json`` + weights, optionally
    ``preprocessor_config.json``), a training output folder (its ``model/``), a ``training_state.pt``,
    or an original repository ``.pth`` (variant from its ``args``, or from ``--config``/model flags);
    ``"demo"`` is the shipped demo detector (``DEMO_CHECKPOINT_DIR``).
    """
    if str(path) == DEMO_CHECKPOINT_NAME:
        path = str(DEMO_CHECKPOINT_DIR)
    source = Path(path)
    if not source.exists():
        raise CliError(f"--checkpoint {path!r}: no such file or folder")
    if source.is_dir() and not (source / "config.json").is_file():
        if (source / MODEL_DIR / "config.json").is_file():
            source = source / MODEL_DIR
        elif (source / STATE_FILE).is_file():
            source = source / STATE_FILE
        else:
            raise CliError(f"--checkpoint {path!r}: folder has no config.json, {MODEL_DIR}/config.json or {STATE_FILE}")

    image_size = getattr(ns, "image_size", None) if ns is not None else None
    max_size = getattr(ns, "max_size", None) if ns is not None else None
    processor = None
    try:
        if source.is_dir():
            model = DeformableDetrForObjectDetection.from_pretrained(source)
            if (source / "preprocessor_config.json").is_file():
                processor = DeformableDetrImageProcessor.from_pretrained(source)
        elif source.name == STATE_FILE:
            state = load_training_state(source)
            config = DeformableDetrConfig.from_dict(state["config"]).copy(use_pretrained_backbone=False)
            model = DeformableDetrForObjectDetection(config)
            model.load_state_dict(state["model"])
            model.eval()
            train_args = state.get("train_args", {})
            processor = make_processor(train_args.get("image_size", 800), train_args.get("max_size", 1333))
        else:
            config = None
            overrides = model_overrides(ns) if ns is not None else {}
            if ns is not None and getattr(ns, "config", None):
                config = DeformableDetrConfig.from_dict({**read_json_file(ns.config, "--config", dict, "a JSON object of DeformableDetrConfig fields"), **overrides})
            elif overrides:
                config = DeformableDetrConfig(**overrides)
            if config is not None:
                original, _ = read_original_checkpoint(source, trust_pickle=bool(getattr(ns, "trust_pickle", False)))
                converted, _ = checkpoints.convert_original_state_dict(original)
                config = config.copy(num_labels=checkpoints.original_num_labels(converted))
            trust = bool(getattr(ns, "trust_pickle", False)) if ns is not None else False
            model = DeformableDetrForObjectDetection.from_pretrained(source, config=config, trust_pickle=trust)
    except CliError:
        raise
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        hint = ""
        if source.is_file() and source.name != STATE_FILE:
            hint = " (for an original .pth: give its variant with --config JSON or --variant and the model flags)"
        raise CliError(f"--checkpoint {path!r}: cannot load it: {err}{hint}") from err

    if processor is None or image_size is not None or max_size is not None:
        base = processor.size if processor is not None else {"shortest_edge": 800, "longest_edge": 1333}
        processor = make_processor(image_size or base.get("shortest_edge", 800), max_size or base.get("longest_edge", 1333))
    model.to(resolve_device(device) if isinstance(device, str) else device)
    model.eval()
    return model, processor
