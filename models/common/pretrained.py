"""``from_pretrained`` keyword handling shared by every model family.

``transformers``' ``from_pretrained`` takes loading options (``torch_dtype``, ``device_map``,
``revision``, ...) and config fields in one ``**kwargs``. ``split_loading_kwargs`` sorts them:
loading options are honoured (or refused by name when we cannot honour them), config fields
become overrides, and anything else raises ``TypeError`` naming it. Nothing is silently absorbed
into the config.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from models.common.checkpoint_files import (
    CONFIG_NAME,
    PYTORCH_NAME,
    SAFETENSORS_NAME,
    fill_shared,
    read_original_checkpoint,
    read_state_dict,
    shared_groups,
    tied_aliases,
)
from models.common.hub import HubOptions, resolve_file

# Accepted and without effect here (what they tune does not exist in this library).
NO_OP_OPTIONS = frozenset({"low_cpu_mem_usage", "trust_remote_code", "_fast_init", "resume_download", "mirror",
                           "_from_auto", "_from_pipeline", "_commit_hash", "use_kernels", "weights_only"})
# Options of transformers' from_pretrained that change loading in ways we do not implement.
REFUSED_OPTIONS = {
    "quantization_config": "quantization is not supported",
    "max_memory": "device_map balancing is not supported: pass one device",
    "offload_folder": "disk offloading is not supported",
    "offload_state_dict": "disk offloading is not supported",
    "offload_buffers": "disk offloading is not supported",
    "from_tf": "TensorFlow checkpoints are not supported",
    "from_flax": "Flax checkpoints are not supported",
    "gguf_file": "GGUF files are not supported",
    "tp_plan": "tensor parallelism is not supported",
    "tp_size": "tensor parallelism is not supported",
    "key_mapping": "key renaming maps are not supported",
    "adapter_kwargs": "adapters are not supported",
    "adapter_name": "adapters are not supported",
    "variant": "weight variants are not supported",
}
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "subfolder", "proxies")


@dataclass
class LoadingOptions:
    """The loading options of one ``from_pretrained`` call (config fields are kept apart)."""

    hub: HubOptions = field(default_factory=HubOptions)
    dtype: torch.dtype | str | None = None
    device_map: Any = None
    ignore_mismatched_sizes: bool = False
    output_loading_info: bool = False
    use_safetensors: bool | None = None
    state_dict: Mapping[str, torch.Tensor] | None = None
    attn_implementation: str | None = None


def split_loading_kwargs(kwargs: dict[str, Any], config_fields: Iterable[str]) -> tuple[LoadingOptions, dict[str, Any]]:
    """Sort ``from_pretrained``'s ``**kwargs`` into loading options and config overrides.

    Args:
        kwargs: the keyword arguments the caller gave (not modified).
        config_fields: names that are config fields (or aliases) and so may be overridden.

    Returns:
        ``(LoadingOptions, config overrides)``.

    Raises:
        NotImplementedError: a ``transformers`` loading option we cannot honour (named).
        TypeError: a name that is neither a loading option nor a config field (named).
    """
    fields = set(config_fields)
    options = LoadingOptions()
    hub: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in kwargs.items():
        if name in HUB_OPTIONS:
            hub[name] = value
        elif name in ("torch_dtype", "dtype"):
            if value is not None:
                if options.dtype is not None and options.dtype != value:
                    raise ValueError(f"{name}={value!r} contradicts the dtype given already ({options.dtype!r})")
                options.dtype = value
        elif name == "use_auth_token":
            warnings.warn("use_auth_token is deprecated: use token", FutureWarning, stacklevel=3)
            hub["token"] = value
        elif name in ("device_map", "ignore_mismatched_sizes", "output_loading_info", "use_safetensors", "state_dict", "attn_implementation"):
            setattr(options, name, value)
        elif name in NO_OP_OPTIONS:
            continue
        elif name in REFUSED_OPTIONS:
            if value is None or value is False:
                continue
            raise NotImplementedError(f"from_pretrained: {name} - {REFUSED_OPTIONS[name]}")
        elif name in fields:
            overrides[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise TypeError(f"from_pretrained got unexpected keyword arguments {sorted(unknown)}: neither loading options nor config fields")
    options.hub = HubOptions(**hub)
    options.dtype = check_dtype(options.dtype)
    if options.attn_implementation not in (None, "eager"):
        raise ValueError(f"attn_implementation must be None or 'eager' (the deformable attention has one implementation), got {options.attn_implementation!r}")
    if not isinstance(options.ignore_mismatched_sizes, bool):
        raise TypeError(f"ignore_mismatched_sizes must be a bool, got {options.ignore_mismatched_sizes!r}")
    return options, overrides


def load_pretrained_files(name_or_path: str | os.PathLike, options: LoadingOptions) -> tuple[str | None, dict[str, torch.Tensor]]:
    """``(config.json path or None, state dict)`` of a local directory or a Hub repo id.

    Weights: ``options.state_dict`` when given; else ``model.safetensors``, then
    ``pytorch_model.bin`` (read with ``weights_only``); ``use_safetensors=True`` requires the
    first, False skips it. Sharded checkpoints are not supported.
    """

    name = os.fspath(name_or_path)
    config_path = resolve_file(name, CONFIG_NAME, options.hub, required=False)
    if options.state_dict is not None:
        return config_path, dict(options.state_dict)
    candidates = [SAFETENSORS_NAME, PYTORCH_NAME]
    if options.use_safetensors is True:
        candidates = [SAFETENSORS_NAME]
    elif options.use_safetensors is False:
        candidates = [PYTORCH_NAME]
    for filename in candidates:
        path = resolve_file(name, filename, options.hub, required=False)
        if path is not None:
            return config_path, read_state_dict(os.path.dirname(path))
    where = name if os.path.isdir(name) else f"the Hub repo {name!r} (revision {options.hub.revision or 'main'})"
    raise FileNotFoundError(f"{where} holds none of {candidates}; sharded checkpoints are not supported")


def check_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """A ``torch.dtype``, ``"auto"`` or None; names such as ``"float16"`` become dtypes."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype) and getattr(torch, dtype).is_floating_point:
        return getattr(torch, dtype)
    raise ValueError(f"torch_dtype must be a floating-point torch.dtype, its name, or 'auto', got {dtype!r}")


def auto_dtype(config_extra: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """What ``torch_dtype="auto"`` means: the config's recorded dtype, else that of the first
    floating-point tensor of the checkpoint, else float32."""
    for key in ("dtype", "torch_dtype"):
        recorded = config_extra.get(key)
        if isinstance(recorded, str) and isinstance(getattr(torch, recorded, None), torch.dtype):
            return getattr(torch, recorded)
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def resolve_device(device_map: Any) -> torch.device | None:
    """One device from a ``device_map``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (the GPU when
    there is one), an int (a CUDA index), a ``torch.device``, or ``{"": device}``. None: leave as is."""
    if device_map is None:
        return None
    if isinstance(device_map, Mapping):
        if set(device_map) != {""}:
            raise NotImplementedError(f"device_map: splitting a model across devices is not supported; pass one device or {{'': device}}, got keys {sorted(device_map)}")
        device_map = device_map[""]
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, bool):
        raise TypeError(f"device_map must be a device, got {device_map!r}")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device_map must be 'cpu', 'cuda', 'cuda:N', 'auto', an int or a torch.device, got {device_map!r}") from error


def place(model: nn.Module, dtype: torch.dtype | None, device: torch.device | None) -> nn.Module:
    """Cast floating-point parameters and buffers to ``dtype`` and move to ``device`` (either may be None)."""
    if device is not None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device_map={str(device)!r} but torch sees no CUDA device")
        model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model


class TiedStateDictMixin:
    """For ``nn.Module`` subclasses whose state dict holds one tensor under several names (shared
    heads): ``state_dict()`` lists each tensor once and ``load_state_dict`` accepts that.

    This is what lets ``transformers.Trainer`` write checkpoints with safetensors (which refuses
    names that share memory) and resume from them. The names left out are
    ``_keys_to_ignore_on_save`` (as in ``transformers``); the key layout is the one
    ``save_pretrained`` writes. ``state_dict(keep_vars=True)`` still lists every name.
    """

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        return tied_aliases(self)  # type: ignore[arg-type]

    @property
    def _tied_weights_keys(self) -> list[str]:
        return tied_aliases(self)  # type: ignore[arg-type]

    def tie_weights(self) -> None:
        """Nothing to do: the shared heads are the same modules."""

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]:
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)  # type: ignore[misc]
        if keep_vars or args:
            return state
        for name in tied_aliases(self):  # type: ignore[arg-type]
            state.pop(prefix + name, None)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        state = dict(state_dict)
        fill_shared(state, shared_groups(self))  # type: ignore[arg-type]
        return super().load_state_dict(state, strict=strict, assign=assign)  # type: ignore[misc]


class OriginalFormat(NamedTuple):
    """How a family reads its original repository's ``.pth``: key renaming, config from ``args``,
    and the class count from the (renamed) state dict."""

    convert: Callable[[Mapping[str, torch.Tensor]], tuple[dict[str, torch.Tensor], list[str]]]
    config_from_args: Callable[[Any, int], Any]
    num_labels: Callable[[Mapping[str, torch.Tensor]], int]


def read_checkpoint(
    path: str | os.PathLike, config: Any, options: LoadingOptions, *, trust_pickle: bool, config_class: type, original: OriginalFormat | None
) -> tuple[Any, dict[str, torch.Tensor], list[str], bool]:
    """``(config, state dict, unmapped keys, from_original)`` of any checkpoint a family loads.

    ``path`` is an original ``.pth`` file (renamed by ``original``; config from its ``args`` unless
    ``config`` is given), or a directory / Hub repo id in our layout (config from ``config.json``).
    A family without ``original`` reads directories and Hub ids only.
    """

    path = os.fspath(path)
    if os.path.isfile(path):
        if original is None:
            raise ValueError(f"{path!r} is a file; {config_class.__name__}'s family loads a checkpoint directory (config.json + weights) or a Hub repo id")
        checkpoint, args = read_original_checkpoint(path, trust_pickle=trust_pickle)
        state_dict, unmapped = original.convert(checkpoint)
        if config is None:
            if args is None:
                raise ValueError(f"{path} has no 'args'; pass config= with the architecture it was trained with")
            config = original.config_from_args(args, original.num_labels(state_dict))
        return config, state_dict, unmapped, True
    config_path, state_dict = load_pretrained_files(path, options)
    if config is None:
        if config_path is None:
            raise FileNotFoundError(f"no config.json for {path!r}: pass config=")
        config = config_class.from_json_file(config_path)
    return config, dict(state_dict), [], False
