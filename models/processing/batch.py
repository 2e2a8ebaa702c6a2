"""The mapping the image processors return: ``pixel_values``, ``pixel_mask`` and optional ``labels``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _check_same_shapes(values: list) -> None:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise ValueError(
            f"return_tensors cannot stack arrays of different shapes {sorted(shapes)}: pad the images "
            "(do_pad=True) or pass return_tensors=None"
        )


def _convert(value: Any, return_tensors: str | None) -> Any:
    if return_tensors == "pt":
        if isinstance(value, list) and value and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in value):
            _check_same_shapes(value)
            return torch.stack([torch.as_tensor(v) for v in value])
        if isinstance(value, (np.ndarray, tuple, list)):
            return torch.as_tensor(np.asarray(value))
        return value
    if return_tensors == "np":
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            _check_same_shapes(value)
            return np.stack(value)
        if isinstance(value, (tuple, list)):
            return np.asarray(value)
    return value


def _move(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, torch.Tensor):
        # Only floating tensors change dtype; masks and ids keep theirs.
        if value.is_floating_point():
            return value.to(*args, **kwargs)
        device = kwargs.get("device")
        for arg in args:
            if isinstance(arg, (str, torch.device)):
                device = arg
        return value.to(device) if device is not None else value
    if isinstance(value, dict):
        return {key: _move(item, *args, **kwargs) for key, item in value.items()}
    if isinstance(value, list):
        return [_move(item, *args, **kwargs) for item in value]
    return value


class BatchFeature(dict):
    """A dict of model inputs that also reads its keys as attributes and moves tensors with ``to``.

    ``return_tensors``: ``None`` keeps what the processor produced, ``"pt"`` makes torch tensors (stacking
    lists of arrays), ``"np"`` numpy arrays. ``labels`` is a list with one dict per image, converted the
    same way entry by entry.
    """

    def __init__(self, data: dict[str, Any] | None = None, return_tensors: str | None = None) -> None:
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        super().__init__()
        for key, value in (data or {}).items():
            if key == "labels" and value is not None:
                self[key] = [{k: _convert(v, return_tensors) for k, v in target.items()} for target in value]
            else:
                self[key] = _convert(value, return_tensors)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        """Move every tensor (also inside ``labels``) with ``Tensor.to``; only floating tensors change dtype."""
        moved = BatchFeature()
        for key, value in self.items():
            moved[key] = _move(value, *args, **kwargs)
        return moved
