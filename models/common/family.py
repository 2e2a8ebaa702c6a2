"""What a model family is, for the registry (``models.registry``): a name, a config class, a
detector class, its variants, its training recipe and how its images are prepared. Plain data, no
torch import.

A third-party package describes its family with one ``Family`` and exposes it through the Python
entry point group ``deformable_detr.families`` (see ``docs/custom_variant.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

RESIZE_MODES = ("shortest_edge", "square")
AUGMENTATIONS = ("detr", "rt_detr")


class ImageRecipe(NamedTuple):
    """How the training engine, ``detect`` and ``eval`` prepare a family's images (plain data; the
    engine builds the image processor and the training transforms from it, so the two agree).

    processor: the image processor class as ``"module:Class"`` (the one training saves as
        ``preprocessor_config.json`` and ``detect``/``eval`` read back); called as
        ``Class(size=..., do_normalize=...)`` and ``Class.from_pretrained(folder)``.
    resize: ``"shortest_edge"``: the short side to ``image_size``, the long side at most ``max_size``,
        batches padded with a ``pixel_mask``; ``"square"``: every image to ``image_size`` x
        ``image_size`` (aspect ratio not kept, ``max_size`` unused, no padding).
    normalize: ImageNet mean/std after rescaling to [0, 1]; False: the model reads [0, 1] pixels.
    augment: the training augmentation before that resize: ``"detr"``: a horizontal flip (and, with
        ``multiscale``, Deformable DETR's random resizes and crops); ``"rt_detr"``: RT-DETR's photometric
        distortion, zoom out, IoU crop and flip (``models.data.rt_detr_augmentation``; ``square`` only).
    """

    processor: str = "models.processing.image_processing:DeformableDetrImageProcessor"
    resize: str = "shortest_edge"
    normalize: bool = True
    augment: str = "detr"


class Family(NamedTuple):
    """A model family.

    name: the ``--model`` name (lower case, ``-`` between words).
    config_class: its config (``from_dict``, ``model_type``).
    detector_class: its detector (``cls(config)``, ``from_pretrained``, ``save_pretrained``).
    description: one line for ``--help``.
    defaults: config fields the family sets over its config class's defaults (e.g. hybrid matching).
    variants: ``--variant`` name → config fields (applied over ``defaults``).
    recipe: ``TrainingArgs`` fields where the family's paper differs from Deformable DETR's recipe.
    images: how its images are resized and normalized (``ImageRecipe``; default Deformable DETR's).
    """

    name: str
    config_class: type
    detector_class: type
    description: str = ""
    defaults: Mapping[str, Any] = {}
    variants: Mapping[str, Mapping[str, Any]] = {}
    recipe: Mapping[str, Any] = {}
    images: ImageRecipe = ImageRecipe()

    def config_fields(self, variant: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The config fields of ``variant`` (None: the family's defaults only) with ``overrides``."""
        if variant is not None and variant not in self.variants:
            raise ValueError(f"variant must be one of {sorted(self.variants)} for --model {self.name}, got {variant!r}")
        return {**self.defaults, **(self.variants[variant] if variant is not None else {}), **overrides}

    def config(self, variant: str | None = None, **overrides: Any) -> Any:
        """A config of ``variant`` with ``overrides``."""
        return self.config_class(**self.config_fields(variant, **overrides))

    def build(self, variant: str | None = None, **overrides: Any) -> Any:
        """A detector of ``variant`` with config ``overrides`` (fresh weights)."""
        return self.detector_class(self.config(variant, **overrides))


def check_family(family: Any, source: str) -> Family:
    """``family`` if it is a well-formed ``Family``; ``TypeError``/``ValueError`` naming ``source``."""
    if not isinstance(family, Family):
        raise TypeError(f"{source} must be a models.common.family.Family, got {type(family).__name__}")
    if not family.name or family.name != family.name.lower() or not family.name.replace("-", "").isalnum():
        raise ValueError(f"{source}: family name must be lower case letters, digits and '-', got {family.name!r}")
    for attribute in ("config_class", "detector_class"):
        if not isinstance(getattr(family, attribute), type):
            raise TypeError(f"{source}: {attribute} must be a class, got {getattr(family, attribute)!r}")
    if not isinstance(family.images, ImageRecipe) or family.images.resize not in RESIZE_MODES:
        raise ValueError(f"{source}: images must be an ImageRecipe with resize in {RESIZE_MODES}, got {family.images!r}")
    if family.images.augment not in AUGMENTATIONS:
        raise ValueError(f"{source}: images.augment must be one of {AUGMENTATIONS}, got {family.images.augment!r}")
    if family.images.augment == "rt_detr" and family.images.resize != "square":
        raise ValueError(f"{source}: images.augment 'rt_detr' ends in a square resize; it needs resize 'square', "
                         f"got {family.images.resize!r}")
    return family
