"""lmmops.icl: configuring the in-context sequence (docs/methods.md §1): embedders, a vector index, retrieval
strategies and manipulations of the retrieved demonstrations.

Public API:
  embedders:     TextEmbedder, ImageEmbedder, PixelImageEmbedder, ModelImageEmbedder, JointEmbedder,
                 ClipEmbedder, l2_normalize
  index:         VectorIndex, IndexManifest, StaleIndexError, check_compatible, read_manifest, exact_search,
                 recall_at_k, default_nlist
  retrieval:     Retriever, retrieve, STRATEGIES, Strategy, demos_for, qa_text
  manipulations: mismatch_images, mismatch_questions, mismatch_answers, wrong_answers, reverse_order,
                 instruction_prefix, apply_manipulation, MANIPULATIONS, DEFAULT_INSTRUCTION

Run: `python -m pytest tests/icl -q`; benchmark: `python benchmarks/retrieval.py`.

Departures from the reference: see the docstrings of `embedders`, `index`, `retrieval` and `manipulations`.
"""

from lmmops.icl.embedders import (
    ClipEmbedder,
    ImageEmbedder,
    JointEmbedder,
    ModelImageEmbedder,
    PixelImageEmbedder,
    TextEmbedder,
    l2_normalize,
)
from lmmops.icl.index import (
    IndexManifest,
    StaleIndexError,
    VectorIndex,
    check_compatible,
    default_nlist,
    exact_search,
    read_manifest,
    recall_at_k,
)
from lmmops.icl.manipulations import (
    DEFAULT_INSTRUCTION,
    MANIPULATIONS,
    apply_manipulation,
    instruction_prefix,
    mismatch_answers,
    mismatch_images,
    mismatch_questions,
    reverse_order,
    wrong_answers,
)
from lmmops.icl.retrieval import STRATEGIES, Retriever, Strategy, demos_for, qa_text, retrieve

__all__ = [
    "DEFAULT_INSTRUCTION",
    "MANIPULATIONS",
    "STRATEGIES",
    "ClipEmbedder",
    "ImageEmbedder",
    "IndexManifest",
    "JointEmbedder",
    "ModelImageEmbedder",
    "PixelImageEmbedder",
    "Retriever",
    "StaleIndexError",
    "Strategy",
    "TextEmbedder",
    "VectorIndex",
    "apply_manipulation",
    "check_compatible",
    "default_nlist",
    "demos_for",
    "exact_search",
    "instruction_prefix",
    "l2_normalize",
    "mismatch_answers",
    "mismatch_images",
    "mismatch_questions",
    "qa_text",
    "read_manifest",
    "recall_at_k",
    "retrieve",
    "reverse_order",
    "wrong_answers",
]
