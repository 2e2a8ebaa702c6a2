"""Everything a new variant or a plug-in family builds on, from one module.

``docs/custom_variant.md`` walks through it with H-Deformable-DETR as the example.

- The detector and its parts: ``QueryGroupDetector`` (heads, criterion, groups; forward and loss
  written once), ``DeformableTransformerModel`` (the named steps), ``SelectedQueries`` (what a
  query selection returns), ``GroupDecoderOutput``.
- Query selections: ``LearnedQueries``, ``TwoStageProposals`` (Deformable DETR),
  ``MixedQuerySelection`` (DINO).
- Query groups: ``QueryGroup`` (base), ``GroupQueries``, ``GroupLoss``, ``SelectedQueriesGroup``
  (hybrid one-to-many, Group-DETR), ``DenoisingGroup``.
- Decoder policies: ``NoRefinement``, ``DetachedRefinement``, ``LookForwardTwice``,
  ``BoxHeadRefinement`` (base of the box-head policies), ``InputQueryPosition``, ``BoxQueryPosition``.
- Checkpoints: ``PretrainedMixin`` (``from_pretrained``/``save_pretrained`` for a new class),
  ``CheckpointFormat``.
- Families: ``Family``, ``register_family``, ``ENTRY_POINT_GROUP``.
"""

from __future__ import annotations

from detr_blocks.query_position import BoxQueryPosition, InputQueryPosition
from detr_blocks.refinement import BoxHeadRefinement, DetachedRefinement, LookForwardTwice, NoRefinement, ReferenceRefinement
from models.common.deformable_transformer import DeformableTransformerModel, GroupDecoderOutput, SelectedQueries
from models.common.denoising_group import DenoisingGroup
from models.common.detector import QueryGroupDetector
from models.common.family import Family
from models.common.pretrained_model import CheckpointFormat, PretrainedMixin
from models.common.query_groups import GroupLoss, GroupQueries, QueryGroup
from models.common.selected_group import SelectedQueriesGroup
from models.ddetr.query_selection import LearnedQueries, TwoStageProposals
from models.dino.query_selection import MixedQuerySelection
from models.registry import ENTRY_POINT_GROUP, register_family

__all__ = [
    "ENTRY_POINT_GROUP",
    "BoxHeadRefinement",
    "BoxQueryPosition",
    "CheckpointFormat",
    "DeformableTransformerModel",
    "DenoisingGroup",
    "DetachedRefinement",
    "Family",
    "GroupDecoderOutput",
    "GroupLoss",
    "GroupQueries",
    "InputQueryPosition",
    "LearnedQueries",
    "LookForwardTwice",
    "MixedQuerySelection",
    "NoRefinement",
    "PretrainedMixin",
    "QueryGroup",
    "QueryGroupDetector",
    "ReferenceRefinement",
    "SelectedQueries",
    "SelectedQueriesGroup",
    "TwoStageProposals",
    "register_family",
]
