"""Model settings from the command line, devices, and loading a detector from any checkpoint it accepts."""

from __future__ import annotations

import argparse
import difflib
import warnings
from pathlib import Path
from typing import Any

import torch

from models.cli.errors import CliError, read_json_file
from models.common.checkpoint_files import CheckpointMismatchError, CorruptCheckpointError, UnfitWeightsError, UntrustedPickleError, read_original_checkpoint
from models.common.hub import looks_like_repo_id, resolve_file
from models.ddetr.config import _IGNORED_BASE_KEYS, DeformableDetrConfig
from models.engine.training import MODEL_DIR, STATE_FILE, load_training_state, make_processor, processor_class, processor_sizes
from models.processing.image_processing import DeformableDetrImageProcessor
from models.quantization.artifact import is_quantized_checkpoint
from models.registry import Family, build_detector, config_from_dict, families, family, family_of

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


# a flag that sets several fields: each of them the family's config has
_SHARED_FLAGS = {
    "heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "ffn_dim": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "n_points": ("encoder_n_points", "decoder_n_points"),
    "num_queries": ("num_queries", "two_stage_num_proposals"),
}


def model_family(ns: argparse.Namespace | None, default: str = "deformable-detr") -> str:
    """The ``--model`` family name (see ``models.registry``); ``default`` when not given."""
    name = getattr(ns, "model", None) if ns is not None else None
    return default if name is None else name


def model_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """Config fields set by the model flags (only those given) and ``--variant``, in the ``--model``
    family's names; a flag whose field the family's config lacks is an error naming it."""
    chosen = family(model_family(ns))
    fields = chosen.config_class.field_names()
    out: dict[str, Any] = {}
    if getattr(ns, "variant", None):
        if ns.variant not in chosen.variants:
            raise CliError(f"--variant {ns.variant!r} is not a variant of --model {chosen.name}; its variants: {', '.join(sorted(chosen.variants)) or 'none'}")
        out.update(chosen.variants[ns.variant])
    for flag, field in MODEL_FLAGS.items():
        value = getattr(ns, flag, None)
        if value is None:
            continue
        if flag in _SHARED_FLAGS:  # the family's fields among the flag's (RT-DETR: no deformable encoder, no proposals count)
            names = [name for name in _SHARED_FLAGS[flag] if name in fields]
            if not names:
                raise CliError(f"--{flag.replace('_', '-')}: --model {chosen.name} has none of {list(_SHARED_FLAGS[flag])} ({chosen.config_class.__name__})")
            out.update({name: value for name in names})
        elif field not in fields:
            raise CliError(f"--{flag.replace('_', '-')}: --model {chosen.name} has no {field!r} setting ({chosen.config_class.__name__})")
        else:
            out[field] = value
    if getattr(ns, "out_indices", None):
        if "backbone_config" in fields and "backbone_kwargs" in fields and "encoder_in_channels" in fields:
            raise CliError(f"--out-indices: --model {chosen.name} takes its backbone stages from backbone_config['out_indices'] with "
                           "encoder_in_channels (give them in a --config file)")
        if "backbone_out_indices" in fields:
            out["backbone_out_indices"] = list(ns.out_indices)
        else:
            out["backbone_kwargs"] = {"out_indices": list(ns.out_indices), "in_chans": 3}
    return out


_HF_FILE_KEYS = frozenset({"model_type", "architectures", "transformers_version", "torch_dtype", "use_return_dict",
                           "hidden_size", "num_attention_heads"})


def check_config_keys(data: dict[str, Any], source: str, config_class: type = DeformableDetrConfig) -> None:
    """Raise ``CliError`` naming ``source`` and every key of ``data`` that no ``config_class`` field
    takes (a typo such as ``num_querys`` would otherwise be kept silently as an extra attribute)."""
    known = set(config_class.field_names())
    known |= _HF_FILE_KEYS | _IGNORED_BASE_KEYS
    unknown = sorted(key for key in data if key not in known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise CliError(f"{source}: unknown {config_class.__name__} field(s): {', '.join(hints)}")


def read_config_file(path: str, flag: str = "--config", config_class: type = DeformableDetrConfig) -> dict[str, Any]:
    """The fields of a ``config_class`` JSON named by ``flag``; unknown keys are an error naming them."""
    data = read_json_file(path, flag, dict, f"a JSON object of {config_class.__name__} fields")
    check_config_keys(data, f"{flag} {path!r}", config_class)
    return data


def check_eval_dataset(dataset: Any, split: str) -> None:
    """Refuse a split with no images (an AP would be meaningless); warn when no box can be matched (every AP is -1)."""
    problem = dataset.usability_problem()
    if problem is None:
        return
    if not dataset.images:
        raise CliError(f"split {split!r}: {problem}; there is nothing to evaluate")
    warnings.warn(f"split {split!r}: {problem}; every AP and AR will be -1", stacklevel=2)


def interrupted_training_message(out: str | Path) -> str:
    """What ``train`` prints on Ctrl-C: where the last complete checkpoint is, and how to continue."""
    state = Path(out) / STATE_FILE
    if state.is_file():
        return f"interrupted, checkpoint at {str(state)!r} (continue with --resume {str(out)!r})"
    return "interrupted before the first checkpoint was written (nothing to resume)"


def _check_size_flags(ns: argparse.Namespace | None) -> tuple[int | None, int | None]:
    values = []
    for flag in ("image_size", "max_size"):
        value = getattr(ns, flag, None) if ns is not None else None
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CliError(f"--{flag.replace('_', '-')} must be a positive number of pixels, got {value!r}")
        values.append(value)
    image_size, max_size = values
    if image_size is not None and max_size is not None and max_size < image_size:
        raise CliError(f"--max-size ({max_size}) must be >= --image-size ({image_size})")
    return image_size, max_size


def _check_folder_json(folder: Path, flag_path: str) -> None:
    """Parse the JSON files of a checkpoint folder first, so a broken one is named (not a bare JSON error)."""
    for name in ("config.json", "preprocessor_config.json"):
        file = folder / name
        if file.is_file():
            read_json_file(str(file), f"--checkpoint {flag_path!r}:", dict, "a JSON object")


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: CUDA is not available on this machine")
    return torch.device(name)


def _load_quantized(source: Path, path: str, ns: argparse.Namespace | None, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
    """``(int8 detector, its processor)`` of a folder written by ``deformable-detr quantize`` (CPU only;
    its input size is fixed, so the size flags are refused)."""
    from models.quantization import load_quantized

    placed = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if placed.type != "cpu":
        raise CliError(f"--checkpoint {path!r} is an int8 CPU detector; run it with --device cpu (or auto on a machine without a GPU)")
    given = [flag for flag in ("image_size", "max_size", "model", "variant", "config") if ns is not None and getattr(ns, flag, None)]
    if given:
        raise CliError(f"--checkpoint {path!r} is a quantized detector with a fixed input size and model; drop {', '.join('--' + f.replace('_', '-') for f in given)}")
    try:
        model = load_quantized(source)
    except (ValueError, RuntimeError, OSError) as err:
        raise CliError(f"--checkpoint {path!r}: cannot load the quantized detector: {err}") from err
    if not (source / "preprocessor_config.json").is_file():
        raise CliError(f"--checkpoint {path!r}: the quantized folder has no preprocessor_config.json (its images must be resized as at calibration)")
    return model, _saved_processor(source, path)


def _saved_processor(source: Path, path: str) -> Any:
    """The image processor a folder's ``preprocessor_config.json`` names (``image_processor_type``),
    among the families' processors (Deformable DETR's when it names none)."""
    kind = read_json_file(str(source / "preprocessor_config.json"), "--checkpoint", dict, "an image processor's settings").get("image_processor_type")
    kinds = {}
    for item in families():
        cls = processor_class(item.images)
        kinds.setdefault(cls.__name__, cls)
    chosen = kinds.get(kind or DeformableDetrImageProcessor.__name__) or kinds.get(str(kind).removesuffix("Fast"))
    if chosen is None:
        raise CliError(f"--checkpoint {path!r}: preprocessor_config.json names image_processor_type {kind!r}; known: {sorted(kinds)}")
    return chosen.from_pretrained(source)


def _check_family_flag(ns: argparse.Namespace | None, found: Family, path: str) -> None:
    """``CliError`` when ``--model`` names another family than the checkpoint's (families that share
    a detector class, e.g. h-deformable-detr and deformable-detr, load each other's checkpoints)."""
    asked = getattr(ns, "model", None) if ns is not None else None
    if asked is not None and family(asked).detector_class is not found.detector_class:
        raise CliError(f"--checkpoint {path!r} is a {found.name} checkpoint, but --model {asked} was given; drop --model (a checkpoint names its own family) or give {found.name}")


def _check_variant_flag(ns: argparse.Namespace | None, found: Family, config: Any, path: str) -> None:
    """``CliError`` naming every setting where ``--variant`` or a model flag disagrees with the checkpoint's config."""
    if ns is None:
        return
    asked = family(ns.model) if getattr(ns, "model", None) else found
    wanted = model_overrides(argparse.Namespace(**{**vars(ns), "model": asked.name}))
    wanted.pop("use_pretrained_backbone", None)
    differ = [f"{name}={value!r} (checkpoint: {getattr(config, name, None)!r})" for name, value in wanted.items() if getattr(config, name, None) != value]
    differ += _config_file_differences(ns, asked, config)
    if differ:
        raise CliError(f"--checkpoint {path!r}: its config.json sets the model; these flags disagree with it: {', '.join(differ)}; drop them")


_FILE_KEYS = frozenset({"architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "model_type", "use_pretrained_backbone"})


def _config_file_differences(ns: argparse.Namespace, asked: Family, config: Any) -> list[str]:
    """The fields of ``--config`` whose values differ from the checkpoint's ``config`` (a checkpoint
    that carries its own config ignores ``--config``, so a difference would be lost silently)."""
    if not getattr(ns, "config", None):
        return []
    given = read_config_file(ns.config, config_class=asked.config_class)
    current = config.to_dict()
    merged = asked.config_class.from_dict({**current, **given}).to_dict()  # the file's values, normalised
    return [f"--config {key}={merged[key]!r} (checkpoint: {current.get(key)!r})" for key in sorted(given)
            if key not in _FILE_KEYS and key in merged and merged[key] != current.get(key)]


def _config_with_head_classes(config: DeformableDetrConfig, given: dict[str, Any], head_classes: int,
                              ns: argparse.Namespace | None) -> DeformableDetrConfig:
    """``config`` for a ``.pth`` whose class head has ``head_classes`` classes.

    When ``--config`` names its classes (``id2label`` or ``num_labels``), they are kept and must match
    the head (else ``CliError`` naming both); otherwise the head's count is used with generic names.
    """
    if "id2label" in given or "num_labels" in given:
        if config.num_labels != head_classes:
            raise CliError(
                f"--config {getattr(ns, 'config', None)!r} names {config.num_labels} classes but the checkpoint's class head "
                f"has {head_classes}; give a config with the checkpoint's classes"
            )
        return config
    return config.copy(num_labels=head_classes)


def _warn_size_overrides(processor: Any, image_size: int | None, max_size: int | None, path: str) -> None:
    """Warn when ``--image-size``/``--max-size`` differ from the checkpoint's ``preprocessor_config.json``
    (the flags win: explicit settings override, but never silently)."""
    if processor is None:
        return
    saved = dict(zip(("--image-size", "--max-size"), processor_sizes(processor)))
    given = {"--image-size": image_size, "--max-size": max_size}
    differ = [f"{flag} {given[flag]} (the checkpoint's: {saved[flag]})" for flag in saved
              if given[flag] is not None and saved[flag] is not None and given[flag] != saved[flag]]
    if differ:
        warnings.warn(f"--checkpoint {path!r}: {', '.join(differ)} override its preprocessor_config.json; the model was "
                      "trained at the checkpoint's size, so detections may be worse", stacklevel=3)


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a Hugging Face Hub repo's files (``config.json``, the weights and, when the
    repo has one, ``preprocessor_config.json``), fetched into or read from the ``huggingface_hub``
    cache; ``HF_HUB_OFFLINE=1`` with a filled cache needs no network. ``CliError`` when they cannot be had."""
    try:
        folder = Path(resolve_file(repo_id, "config.json")).parent
        resolve_file(repo_id, "preprocessor_config.json", required=False)
        if resolve_file(repo_id, "model.safetensors", required=False) is None:
            resolve_file(repo_id, "pytorch_model.bin", required=False)
    except (OSError, ImportError) as err:
        raise CliError(f"--checkpoint {repo_id!r} is not a local file or folder, and as a Hugging Face Hub repo id: {err}") from err
    return folder


def load_detector(path: str, ns: argparse.Namespace | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Load ``(model, processor)`` from any checkpoint the command line accepts.

    ``path`` may be a Hugging Face-layout folder (``config.json`` + weights, optionally
    ``preprocessor_config.json``), a training output folder (its ``model/``), a ``training_state.pt``,
    or an original repository ``.pth`` (variant from its ``args``, or from ``--config``/model flags);
    ``"demo"`` is the shipped demo detector (``DEMO_CHECKPOINT_DIR``). A name that is not on the disk
    is looked up on the Hugging Face Hub only when it is shaped like a repo id
    (``models.common.hub.looks_like_repo_id``: ``owner/name``, not ``runs/t1`` when ``runs/`` exists).
    """
    if str(path) == DEMO_CHECKPOINT_NAME:
        path = str(DEMO_CHECKPOINT_DIR)
    source = Path(path)
    if not source.exists() and looks_like_repo_id(str(path)):
        source = hub_snapshot(str(path))
    if not source.exists():
        raise CliError(f"--checkpoint {path!r}: no such local file or folder (and, shaped as a path, not looked up as a "
                       "Hugging Face Hub repo id such as SenseTime/deformable-detr)")
    if source.is_dir() and not (source / "config.json").is_file():
        if (source / MODEL_DIR / "config.json").is_file():
            source = source / MODEL_DIR
        elif (source / STATE_FILE).is_file():
            source = source / STATE_FILE
        else:
            raise CliError(f"--checkpoint {path!r}: folder has no config.json, {MODEL_DIR}/config.json or {STATE_FILE}")

    image_size, max_size = _check_size_flags(ns)
    if source.is_dir() and is_quantized_checkpoint(source):
        return _load_quantized(source, path, ns, device)
    processor = None
    trust = bool(getattr(ns, "trust_pickle", False)) if ns is not None else False
    try:
        if source.is_dir():
            _check_folder_json(source, path)
            found = family_of(read_json_file(str(source / "config.json"), f"--checkpoint {path!r}:", dict, "a JSON object"))
            _check_family_flag(ns, found, path)
            model = found.detector_class.from_pretrained(source)
            _check_variant_flag(ns, found, model.config, path)
            if (source / "preprocessor_config.json").is_file():
                processor = processor_class(found.images).from_pretrained(source)
        elif source.name == STATE_FILE:
            state = load_training_state(source)
            config = config_from_dict(state["config"]).copy(use_pretrained_backbone=False)
            found = family(state["train_args"].get("model") or family_of(config).name)
            _check_family_flag(ns, found, path)
            _check_variant_flag(ns, found, config, path)
            model = build_detector(config, found.name)
            model.load_state_dict(state["model"])
            model.eval()
            train_args = state["train_args"]
            processor = make_processor(train_args["image_size"], train_args["max_size"], found.images)
        else:
            chosen = found = family(model_family(ns))
            config = None
            overrides = model_overrides(ns) if ns is not None else {}
            given: dict[str, Any] = {}
            if ns is not None and getattr(ns, "config", None):
                given = read_config_file(ns.config, config_class=chosen.config_class)
            if given or overrides:
                config = chosen.config_class.from_dict({**chosen.defaults, **given, **overrides})
                file_format = getattr(chosen.detector_class, "checkpoint_format", None)
                if file_format is not None:
                    original, _ = read_original_checkpoint(source, trust_pickle=trust)
                    converted, _ = file_format.original.convert(original)
                    config = _config_with_head_classes(config, given, file_format.original.num_labels(converted), ns)
            model = chosen.detector_class.from_pretrained(source, config=config, trust_pickle=trust)
    except CliError:
        raise
    except UntrustedPickleError as err:
        what = f" ({err.global_name})" if err.global_name else ""
        raise CliError(
            f"--checkpoint {path!r} holds Python objects besides tensors{what} and loading it could run code; "
            "if you trust the file, add --trust-pickle"
        ) from err
    except CorruptCheckpointError as err:
        raise CliError(f"--checkpoint {path!r}: {err}") from err
    except UnfitWeightsError as err:
        raise CliError(f"--checkpoint {path!r}: cannot load it: {err}") from err
    except CheckpointMismatchError as err:  # its message without the Python-only strict=False
        settings = " (give the checkpoint's own settings: --config JSON, --variant or the model flags)" if source.is_file() else ""
        raise CliError(f"--checkpoint {path!r}: cannot load it: {err.message}{settings}") from err
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        hint = ""
        if source.is_file() and source.name != STATE_FILE:
            hint = " (for an original .pth: give its variant with --config JSON or --variant and the model flags)"
        raise CliError(f"--checkpoint {path!r}: cannot load it: {err}{hint}") from err

    square = found.images.resize == "square"
    paper_size, paper_max = found.recipe.get("image_size", 800), found.recipe.get("max_size", 1333)
    if processor is None and (image_size is None or (max_size is None and not square)):
        resize = (f"a {image_size or paper_size}x{image_size or paper_size} square" if square
                  else f"shortest edge {image_size or paper_size}, longest edge {max_size or paper_max}")
        warnings.warn(
            f"--checkpoint {path!r} has no preprocessor_config.json: assuming the paper's resize ({resize}); if the model "
            f"was trained at another size, detections will be poor: pass --image-size{'' if square else ' and --max-size'}",
            stacklevel=2,
        )
    _warn_size_overrides(processor, image_size, max_size, path)
    if processor is None or image_size is not None or max_size is not None:
        base_size, base_max = processor_sizes(processor) if processor is not None else (paper_size, paper_max)
        short = image_size if image_size is not None else base_size
        processor = make_processor(short, max_size if max_size is not None else max(base_max or paper_max, short), found.images)
    model.to(resolve_device(device) if isinstance(device, str) else device)
    model.eval()
    return model, processor
