"""What the embedded synthetic dataset's images look like (:class:`SyntheticSpec`), without numpy or PIL.

The command line's help text reads these settings, so this module imports nothing heavy; the
generator itself is :mod:`models.data.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
"""Every shape the generator can draw; a dataset uses a subset of them as its classes."""


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generated images look like.

    Attributes:
        image_size: (height, width) of every image in pixels.
        classes: shape names (a subset of :data:`SHAPES`), one class each, in label order.
        category_ids: COCO category id of each class (default 1..K); need not be contiguous.
        min_objects, max_objects: number of shapes per image (inclusive range).
        min_size, max_size: side of a shape's box as a fraction of the shorter image side.
        max_iou: largest IoU allowed between two boxes of the same image (overlaps stay partial).
    """

    image_size: tuple[int, int] = (128, 128)
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    category_ids: tuple[int, ...] | None = None
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 0.15
    max_size: float = 0.45
    max_iou: float = 0.25

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(f"image_size must be (height, width) with both >= 16, got {self.image_size}")
        if not self.classes:
            raise ValueError("classes must name at least one shape")
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            raise ValueError(f"classes: unknown shape(s) {unknown}; choose from {list(SHAPES)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must not repeat, got {list(self.classes)}")
        if self.category_ids is not None:
            if len(self.category_ids) != len(self.classes) or len(set(self.category_ids)) != len(self.classes):
                raise ValueError(
                    f"category_ids must give one distinct id per class ({len(self.classes)}), got {self.category_ids}"
                )
            if any(int(c) < 0 for c in self.category_ids):
                raise ValueError(f"category_ids must be non-negative, got {self.category_ids}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if not 0.02 <= self.min_size <= self.max_size <= 0.95:
            raise ValueError(
                f"need 0.02 <= min_size <= max_size <= 0.95, got min_size={self.min_size}, max_size={self.max_size}"
            )
        if not 0.0 <= self.max_iou < 1.0:
            raise ValueError(f"max_iou must be in [0, 1), got {self.max_iou}")

    @property
    def ids(self) -> tuple[int, ...]:
        """COCO category id of each class."""
        return tuple(int(c) for c in self.category_ids) if self.category_ids is not None else tuple(
            range(1, len(self.classes) + 1)
        )
