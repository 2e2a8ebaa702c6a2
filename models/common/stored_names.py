"""Checkpoint names that differ from attribute names: a submodule stored under another prefix.

``store_under(module, {"query_position.mlp": "query_pos_head"})`` makes ``module.state_dict()``
list ``query_position.mlp.layers.0.weight`` as ``query_pos_head.layers.0.weight`` and makes
``load_state_dict`` accept either name, so a composed module keeps the key layout of the
checkpoints it must read and write (e.g. ``transformers``') without naming its attributes after them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def store_under(module: ModuleT, names: Mapping[str, str]) -> ModuleT:
    """Register the renaming hooks on ``module`` (``{attribute prefix: stored prefix}``, relative to
    ``module``); returns ``module``. ``ValueError`` naming a prefix that is not a submodule."""
    for inner, stored in names.items():
        try:
            module.get_submodule(inner)
        except AttributeError as error:
            raise ValueError(f"names: {inner!r} is not a submodule of {type(module).__name__}") from error
        if not stored or stored == inner:
            raise ValueError(f"names: {inner!r} must be stored under another, non-empty prefix, got {stored!r}")
    pairs = tuple((f"{inner}.", f"{stored}.") for inner, stored in names.items())

    def to_stored(_: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for inner, stored in pairs:
            for key in [key for key in state_dict if key.startswith(prefix + inner)]:
                state_dict[prefix + stored + key[len(prefix + inner):]] = state_dict.pop(key)

    def from_stored(_: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for inner, stored in pairs:
            for key in [key for key in state_dict if key.startswith(prefix + stored)]:
                state_dict[prefix + inner + key[len(prefix + stored):]] = state_dict.pop(key)

    module.register_state_dict_post_hook(to_stored)
    module.register_load_state_dict_pre_hook(from_stored)
    return module
