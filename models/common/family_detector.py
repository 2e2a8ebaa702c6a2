"""The construction every family's detector shares: check the config, let the family build its
parts, hand them to ``QueryGroupDetector``; loading and saving from ``PretrainedMixin``.

A family's detector subclasses ``FamilyDetector``, sets ``box_eps`` and ``detection_output``, and
implements ``build_parts`` (its modules from its config). The constructor arguments are the same
for every family: ``cls(config, *, backbone_body=None, query_selection=None, groups=None,
criterion=None)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from models.common.deformable_transformer import DeformableTransformerModel
from models.common.detector import QueryGroupDetector
from models.common.pretrained import TiedStateDictMixin
from models.common.pretrained_model import PretrainedMixin
from models.common.query_groups import QueryGroup


class DetectorParts(NamedTuple):
    """What a family builds from its config: the transformer ``model``, the per-layer
    ``class_embed`` and ``bbox_embed``, and its default ``criterion``."""

    model: DeformableTransformerModel
    class_embed: nn.ModuleList
    bbox_embed: nn.ModuleList
    criterion: nn.Module


def checked_config(owner: Any, config: Any) -> Any:
    """``config`` validated, if it is ``owner``'s family's config class (``checkpoint_format``);
    ``TypeError`` naming the expected class otherwise."""
    expected = owner.checkpoint_format.config_class
    if not isinstance(config, expected):
        raise TypeError(f"config must be a models.{expected.__name__}, got {type(config).__name__}")
    config.validate()
    return config


class FamilyDetector(PretrainedMixin, TiedStateDictMixin, QueryGroupDetector):
    """A family's detector: ``build_parts`` makes its modules; everything else is shared.

    Args:
        config: the family's config.
        backbone_body: another backbone network (must return a list of maps and carry ``channels``).
        query_selection: another query selection module.
        groups: other training-time query groups (default: those the config switches on).
        criterion: another criterion (default: the family's).
    """

    box_eps: float
    detection_output: type

    def __init__(
        self,
        config: Any,
        *,
        backbone_body: nn.Module | None = None,
        query_selection: nn.Module | None = None,
        groups: list[QueryGroup] | None = None,
        criterion: nn.Module | None = None,
    ) -> None:
        config = checked_config(self, config)
        parts = self.build_parts(config, backbone_body=backbone_body, query_selection=query_selection, groups=groups)
        super().__init__(
            config=config,
            model=parts.model,
            class_embed=parts.class_embed,
            bbox_embed=parts.bbox_embed,
            criterion=parts.criterion if criterion is None else criterion,
            box_eps=self.box_eps,
            output_class=self.detection_output,
        )

    def build_parts(
        self, config: Any, *, backbone_body: nn.Module | None, query_selection: nn.Module | None, groups: list[QueryGroup] | None
    ) -> DetectorParts:
        """The family's modules for ``config`` (called before ``nn.Module.__init__``: build and
        return, do not assign to ``self``)."""
        raise NotImplementedError
