"""MuSES losses. They take embedding tensors, not models, so one forward pass can feed several losses.

- :class:`HierarchicalInfoNCE`: token -> its sentence, sentence -> its document.
- :class:`DimSchedule`, :class:`CurriculumMatryoshkaLoss`, :class:`MatryoshkaAll`: Matryoshka training over dims,
  with a consistency term tying small dims to the full one.
- :class:`InContextSentenceRanking`: query -> its gold sentences among in-context sentences, siblings as hard
  negatives; :class:`MaxSimDocumentRanking`: query -> its document, scored by max-sim over its sentences.
- :class:`RetentionLoss`: distillation from the frozen base model, against catastrophic forgetting.
- :class:`CoSENT`, :class:`MultipleNegativesRanking`, :class:`Contrastive`, :class:`Triplet`,
  :class:`CosineSimilarity`: supervised pair losses (sentence-transformers' own, on embeddings).
"""

from __future__ import annotations

from muses.losses.hierarchical_infonce import HierarchicalInfoNCE, info_nce
from muses.losses.matryoshka import (
    CONSISTENCY_KINDS,
    SCHEDULE_KINDS,
    ConsistencyKind,
    CurriculumMatryoshkaLoss,
    CurriculumOutput,
    DimSchedule,
    MatryoshkaAll,
    ScheduleKind,
    matryoshka_consistency,
)
from muses.losses.pairs import Contrastive, CoSENT, CosineSimilarity, MultipleNegativesRanking, Triplet
from muses.losses.retention import RETENTION_KINDS, RetentionKind, RetentionLoss, in_batch_kl
from muses.losses.sentence_ranking import InContextSentenceRanking, MaxSimDocumentRanking

__all__ = [
    "CONSISTENCY_KINDS",
    "RETENTION_KINDS",
    "SCHEDULE_KINDS",
    "CoSENT",
    "ConsistencyKind",
    "Contrastive",
    "CosineSimilarity",
    "CurriculumMatryoshkaLoss",
    "CurriculumOutput",
    "DimSchedule",
    "HierarchicalInfoNCE",
    "InContextSentenceRanking",
    "MatryoshkaAll",
    "MaxSimDocumentRanking",
    "MultipleNegativesRanking",
    "RetentionKind",
    "RetentionLoss",
    "ScheduleKind",
    "Triplet",
    "in_batch_kl",
    "info_nce",
    "matryoshka_consistency",
]
