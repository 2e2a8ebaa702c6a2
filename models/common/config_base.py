"""What every family's config shares: class names, JSON both ways, local directories, copies.

A family's config subclasses ``DetectionConfig``, sets ``model_type``, stores its fields in
``__init__`` (then calls ``_finish(num_labels, id2label, label2id, unknown)``) and implements
``validate()``. Unknown keyword arguments raise, naming them, unless the family lists them in
``accepted_extra_keys`` (kept and written back).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from typing import Any

from detr_blocks.activation import ACTIVATIONS
from models.common.hub import HubOptions, resolve_file
from models.common.pretrained import HUB_OPTIONS


def check_positive_ints(config: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise ``ValueError`` naming the first field in ``names`` that is not an int >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_numbers(config: Any, names: tuple[str, ...], low: float = 0.0, high: float | None = None) -> None:
    """Raise ``ValueError`` naming the first field in ``names`` that is not a number in [low, high]."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def check_bools(config: Any, names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the first field in ``names`` that is not a bool."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(config, name)!r}")


# The generic keys every transformers PretrainedConfig writes into config.json (generation and
# tokenizer settings): a family config reading a transformers file drops them.
HF_BASE_KEYS = frozenset(
    {
        "_name_or_path", "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
        "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty",
        "do_sample", "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id",
        "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id", "forced_eos_token_id",
        "is_decoder", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups",
        "num_beams", "num_return_sequences", "output_scores", "pad_token_id", "prefix", "problem_type",
        "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict_in_generate",
        "sep_token_id", "suppress_tokens", "task_specific_params", "temperature", "tf_legacy_loss",
        "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k", "top_p", "torchscript",
        "typical_p", "use_bfloat16",
    }
)


# The fields every family's config has, with one name and one meaning (each family gives its defaults).
COMMON_FIELDS: tuple[str, ...] = ('backbone', 'dilation', 'num_channels', 'use_pretrained_backbone', 'd_model', 'num_queries', 'num_feature_levels', 'encoder_layers', 'decoder_layers', 'encoder_attention_heads', 'decoder_attention_heads', 'encoder_ffn_dim', 'decoder_ffn_dim', 'encoder_n_points', 'decoder_n_points', 'dropout', 'attention_dropout', 'activation_dropout', 'activation_function', 'disable_custom_kernels', 'class_cost', 'bbox_cost', 'giou_cost', 'class_loss_coefficient', 'bbox_loss_coefficient', 'giou_loss_coefficient', 'focal_alpha', 'auxiliary_loss', 'output_attentions', 'output_hidden_states', 'return_dict')


class DetectionConfig:
    """Base of the families' configs: ``num_labels`` / ``id2label`` / ``label2id`` and serialisation."""

    model_type = ""
    accepted_extra_keys: frozenset[str] = frozenset({"architectures", "transformers_version", "torch_dtype", "_name_or_path"})

    # ------------------------------------------------------------------------------------- init
    def _finish(self, num_labels: int | None, id2label: dict | None, label2id: dict | None, unknown: dict[str, Any]) -> None:
        """Set the labels, keep the accepted extra keys, raise on other unknown ones, validate."""
        self._set_labels(num_labels, id2label, label2id)
        self.extra: dict[str, Any] = {}
        rejected = sorted(key for key in unknown if key not in self.accepted_extra_keys and key != "model_type")
        if rejected:
            raise TypeError(f"{type(self).__name__} got unknown arguments {rejected}")
        for key, value in unknown.items():
            if key in self.accepted_extra_keys:
                self.extra[key] = copy.deepcopy(value)
        self.validate()

    def validate(self) -> None:  # pragma: no cover - every family implements it
        raise NotImplementedError

    common_defaults: dict[str, Any] = {}
    """A family that takes the shared fields as keywords (not in its signature): their defaults."""

    def _set_common(self, given: dict[str, Any]) -> dict[str, Any]:
        """Set every field of ``COMMON_FIELDS`` from ``given`` or ``common_defaults``; returns the
        other keys of ``given`` (the family's ``_finish`` checks them)."""
        rest = dict(given)
        for name in COMMON_FIELDS:
            setattr(self, name, copy.deepcopy(rest.pop(name) if name in rest else self.common_defaults[name]))
        return rest

    # The fields every family's config has, with one meaning and one check (a family's ``validate``
    # calls ``validate_common`` first, then checks its own fields).
    COMMON_POSITIVE_INTS = ("num_channels", "d_model", "num_queries", "num_feature_levels", "decoder_layers", "encoder_attention_heads",
                            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "encoder_n_points", "decoder_n_points")
    COMMON_FRACTIONS = ("dropout", "attention_dropout", "activation_dropout", "focal_alpha")
    COMMON_WEIGHTS = ("class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient")
    COMMON_BOOLS = ("dilation", "use_pretrained_backbone", "disable_custom_kernels", "auxiliary_loss", "output_attentions",
                    "output_hidden_states", "return_dict")

    def validate_common(self) -> None:
        """Check the shared transformer, matching and loss fields; ``ValueError`` naming the field."""
        check_positive_ints(self, self.COMMON_POSITIVE_INTS)
        check_positive_ints(self, ("encoder_layers",), minimum=0)
        check_numbers(self, self.COMMON_FRACTIONS, 0.0, 1.0)
        check_numbers(self, self.COMMON_WEIGHTS)
        check_bools(self, self.COMMON_BOOLS)
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(f"d_model ({self.d_model}) must be divisible by {heads} ({getattr(self, heads)})")
        if self.d_model % 32:
            raise ValueError(f"d_model must be a multiple of 32 (the input projections use GroupNorm(32, d_model)), got {self.d_model}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {ACTIVATIONS}, got {self.activation_function!r}")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The config's argument names (what ``from_pretrained`` may override)."""
        names = {name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "kwargs")}
        return frozenset(names | (set(COMMON_FIELDS) if cls.common_defaults else set()))

    # ----------------------------------------------------------------------------------- labels
    def _set_labels(self, num_labels: int | None, id2label: dict | None, label2id: dict | None) -> None:
        if id2label is not None:
            if not isinstance(id2label, dict):
                raise TypeError(f"id2label must be a dict {{int: str}}, got {type(id2label).__name__}")
            id2label = {int(key): str(value) for key, value in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels ({num_labels}) does not match len(id2label) ({len(id2label)})")
        else:
            count = num_labels
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
            id2label = {index: f"LABEL_{index}" for index in range(count)}
        if label2id is None:
            label2id = {name: index for index, name in id2label.items()}
        elif not isinstance(label2id, dict):
            raise TypeError(f"label2id must be a dict {{str: int}}, got {type(label2id).__name__}")
        self.id2label = id2label
        self.label2id = {str(key): int(value) for key, value in label2id.items()}

    @property
    def num_labels(self) -> int:
        """Number of classes of the detection head (``len(id2label)``)."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"num_labels must be a positive int, got {value!r}")
        if value != len(self.id2label):
            self._set_labels(value, None, None)

    # ---------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (``id2label`` keys as strings)."""
        data: dict[str, Any] = {key: copy.deepcopy(value) for key, value in self.__dict__.items() if key not in ("extra", "id2label", "label2id")}
        data["id2label"] = {str(index): name for index, name in self.id2label.items()}
        data["label2id"] = dict(self.label2id)
        data["model_type"] = self.model_type
        for key, value in self.extra.items():
            data.setdefault(key, copy.deepcopy(value))
        return dict(sorted(data.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> DetectionConfig:
        """Build from a dict such as ``to_dict()``; ``overrides`` win."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config has model_type {model_type!r}, expected {cls.model_type!r}")
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> DetectionConfig:
        """Read a JSON file written by ``to_json_file``."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {error}") from error
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> DetectionConfig:
        """Read ``config.json`` from a local directory, a JSON file path, or a Hugging Face Hub
        repo id (through ``huggingface_hub`` and its cache; ``revision``, ``cache_dir``,
        ``local_files_only``, ``token``, ``force_download``, ``subfolder`` and ``HF_HUB_OFFLINE``
        are honoured). Other keywords override config fields."""
        path = os.fspath(path)
        hub = HubOptions(**{name: overrides.pop(name) for name in HUB_OPTIONS if name in overrides})
        file = path if os.path.isfile(path) else resolve_file(path, "config.json", hub)
        return cls.from_json_file(file, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``directory/config.json``."""
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, "config.json"))

    def copy(self, **overrides: Any) -> DetectionConfig:
        """A copy with some fields replaced (validated again)."""
        data = self.to_dict()
        if "num_labels" in overrides and "id2label" not in overrides:
            data.pop("id2label")
            data.pop("label2id")
        return type(self).from_dict(data, **overrides)

    def __eq__(self, other: object) -> bool:
        """Equal fields; the keys that describe the file rather than the model (``architectures``,
        ``transformers_version``, ``_name_or_path``) are not compared."""
        if not isinstance(other, type(self)):
            return False
        bookkeeping = ("architectures", "transformers_version", "_name_or_path")
        return {k: v for k, v in self.to_dict().items() if k not in bookkeeping} == {k: v for k, v in other.to_dict().items() if k not in bookkeeping}

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
