"""Which config setting a checkpoint/model key disagreement points to.

Weights that do not fit a model are most often weights of another variant: its config differs in
``num_feature_levels``, ``two_stage`` or ``with_box_refine``. The keys show which:

- ``num_feature_levels``: ``level_embed`` holds one row per level, and ``input_proj.N`` exists for
  every level N;
- ``two_stage``: only two-stage models have the proposal layers ``enc_output`` and ``pos_trans``
  (and no learned ``query_position_embeddings``);
- ``with_box_refine``: refining models keep one box head per decoder layer (``bbox_embed.1`` and
  later exist), others share one (``bbox_embed.0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

_TWO_STAGE_PARTS = ("enc_output", "pos_trans")


def _levels(shapes: Mapping[str, Sequence[int]], names: Sequence[str]) -> int | None:
    """The number of feature levels that ``shapes`` (key → shape) were built with, or None."""
    for name in names:
        if name.endswith("level_embed") and len(shapes[name]) == 2:
            return int(shapes[name][0])
    projections = {int(found.group(1)) for name in names if (found := re.search(r"(?:^|\.)input_proj\.(\d+)\.", name))}
    return max(projections) + 1 if projections else None


def _has(names: Sequence[str], part: str) -> bool:
    return any(re.search(rf"(?:^|\.){part}(?:\.|$)", name) for name in names)


def setting_hints(checkpoint: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor]) -> list[str]:
    """Sentences naming each setting on which the weights ``checkpoint`` and the ``model``'s state dict
    disagree (``num_feature_levels``, ``two_stage``, ``with_box_refine``); empty when none is recognised.

    Args:
        checkpoint: the state dict being loaded, as the file holds it (renamed to the model's keys).
        model: the model's state dict with each shared tensor once (``unique_state_dict``), so
            that heads shared between decoder layers are not taken for one head per layer.
    """
    if not isinstance(checkpoint, Mapping) or not isinstance(model, Mapping):
        raise TypeError("checkpoint and model must be mappings of names to tensors")
    theirs = {name: tuple(tensor.shape) for name, tensor in checkpoint.items()}
    ours = {name: tuple(tensor.shape) for name, tensor in model.items()}
    hints = []
    levels_theirs, levels_ours = _levels(theirs, sorted(theirs)), _levels(ours, sorted(ours))
    if levels_theirs is not None and levels_ours is not None and levels_theirs != levels_ours:
        hints.append(f"num_feature_levels: the weights were trained with {levels_theirs} feature levels, the config builds {levels_ours}")
    stage_theirs = any(_has(list(theirs), part) for part in _TWO_STAGE_PARTS)
    stage_ours = any(_has(list(ours), part) for part in _TWO_STAGE_PARTS)
    if stage_theirs != stage_ours:
        hints.append(f"two_stage: the weights {'have' if stage_theirs else 'lack'} the two-stage proposal layers (enc_output, pos_trans), "
                     f"the config sets two_stage={stage_ours}")
    refine_theirs, refine_ours = _distinct_box_heads(checkpoint), _distinct_box_heads(model)
    if refine_theirs != refine_ours and not (stage_theirs != stage_ours and _decoder_layers(ours) == 1):
        hints.append(f"with_box_refine: the weights have {'one box head per decoder layer' if refine_theirs else 'one shared box head'}, "
                     f"the config sets with_box_refine={refine_ours}")
    return hints


def _distinct_box_heads(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds a second box head (``bbox_embed.1``) that is not a copy of the first."""
    for name, tensor in state.items():
        found = re.search(r"(?:^|\.)bbox_embed\.1\.", name)
        if found is None:
            continue
        first = state.get(name[: found.start()] + name[found.start():].replace("bbox_embed.1.", "bbox_embed.0.", 1))
        if first is None or first.shape != tensor.shape or not torch.equal(first, tensor):
            return True
    return False


def _decoder_layers(shapes: Mapping[str, Sequence[int]]) -> int:
    found = {int(m.group(1)) for name in shapes if (m := re.search(r"decoder\.layers\.(\d+)\.", name))}
    return max(found) + 1 if found else 0
