"""Size arguments of the image processors: the accepted ``size`` / ``pad_size`` forms and the output size.

The three ``size`` forms (same keys as the Hugging Face processors):

- ``{"shortest_edge": s, "longest_edge": l}``: keep the aspect ratio, make the short side ``s`` unless that
  would make the long side exceed ``l``, in which case the long side becomes (about) ``l``.
- ``{"height": h, "width": w}``: exactly ``h x w``, aspect ratio not kept.
- ``{"max_height": h, "max_width": w}``: keep the aspect ratio, scale (up or down) until one side touches
  its maximum.

An int ``s`` means ``{"shortest_edge": s, "longest_edge": 1333}`` and a pair ``(h, w)`` means
``{"height": h, "width": w}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SizeLike = int | Sequence[int] | Mapping[str, int]

DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
DEFAULT_LONGEST_EDGE = 1333

_SIZE_FORMS = (
    frozenset({"shortest_edge", "longest_edge"}),
    frozenset({"height", "width"}),
    frozenset({"max_height", "max_width"}),
)


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def normalize_size(size: SizeLike, name: str = "size") -> dict[str, int]:
    """Return ``size`` as one of the three dict forms, raising a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(size, Mapping):
        keys = frozenset(size.keys())
        if keys not in _SIZE_FORMS:
            raise ValueError(
                f"{name} must have the keys {{'shortest_edge', 'longest_edge'}}, {{'height', 'width'}} or "
                f"{{'max_height', 'max_width'}}, got {sorted(keys)}"
            )
        return {key: _check_positive_int(size[key], f"{name}[{key!r}]") for key in size}
    if isinstance(size, int) and not isinstance(size, bool):
        return {"shortest_edge": _check_positive_int(size, name), "longest_edge": DEFAULT_LONGEST_EDGE}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {
            "height": _check_positive_int(size[0], f"{name}[0]"),
            "width": _check_positive_int(size[1], f"{name}[1]"),
        }
    raise ValueError(f"{name} must be a dict, an int or a (height, width) pair, got {size!r}")


def normalize_pad_size(pad_size: SizeLike | None) -> dict[str, int] | None:
    """Return ``pad_size`` as ``{"height", "width"}`` (or ``None``)."""
    if pad_size is None:
        return None
    if isinstance(pad_size, Mapping):
        if frozenset(pad_size.keys()) != frozenset({"height", "width"}):
            raise ValueError(f"pad_size must have the keys 'height' and 'width', got {sorted(pad_size.keys())}")
        return {key: _check_positive_int(pad_size[key], f"pad_size[{key!r}]") for key in ("height", "width")}
    if isinstance(pad_size, (tuple, list)) and len(pad_size) == 2:
        return {
            "height": _check_positive_int(pad_size[0], "pad_size[0]"),
            "width": _check_positive_int(pad_size[1], "pad_size[1]"),
        }
    raise ValueError(f"pad_size must be a dict with 'height' and 'width' or a (height, width) pair, got {pad_size!r}")


def resized_shape(width: int, height: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """``(new_width, new_height)`` with the short side ``size``, shrunk so that the long side stays
    <= ``max_size`` (the shortest/longest-edge rule of the reference processors, rounding included).

    Training augmentation and the image processors both resize with this one function, so they
    cannot drift apart.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    short, long = float(min(width, height)), float(max(width, height))
    exact_short = float(size)  # the long side follows the unrounded short side, so it never passes max_size
    if max_size is not None and long / short * size > max_size:
        exact_short = max_size * short / long
        size = int(round(exact_short))
    if min(width, height) == size:
        return width, height
    if width < height:
        return size, int(exact_short * height / width)
    return int(exact_short * width / height), size


def output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """Size ``(height, width)`` an image of ``height x width`` is resized to under the normalized ``size``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if "shortest_edge" in size:
        new_width, new_height = resized_shape(width, height, size["shortest_edge"], size["longest_edge"])
    elif "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        new_height, new_width = int(height * scale), int(width * scale)
    else:
        new_height, new_width = size["height"], size["width"]
    if new_height <= 0 or new_width <= 0:
        raise ValueError(
            f"size {dict(size)} turns an image of {height}x{width} into {new_height}x{new_width}; the aspect ratio "
            "is too extreme for this size"
        )
    return new_height, new_width
