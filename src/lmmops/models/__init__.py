"""lmmops.models: loading real LMM checkpoints, tiny models of their families, and per-family adapters.

Public API:
  build_tiny(family, *, seed=0, attn_implementation=None) -> (model, processor)
  adapter_for(model, processor=None) -> ModelAdapter   (structure, LIVE site, build_prompt(s))
  load_model(spec, *, dtype=None, device="cpu", attn_implementation=None) -> (model, processor)
  ICLItem, PromptBatch, build_tokenizer, FAMILIES, supported_families()
  ModelLoadError, UnsupportedModelError, PromptAlignmentError (all ValueError)

Only this package knows model-family details; the rest of lmmops goes through an adapter.

Run: `python -m pytest tests/models -q`.

Departures from the references: see the docstrings of `tiny`, `adapters`, `prompt` and `loading`.
"""

from lmmops.models.adapters import (
    ADAPTERS,
    ModelAdapter,
    adapter_class_for,
    adapter_for,
    family_of,
    supported_families,
)
from lmmops.models.errors import ModelLoadError, PromptAlignmentError, UnsupportedModelError
from lmmops.models.loading import load_model
from lmmops.models.prompt import ICLItem, PromptBatch
from lmmops.models.tiny import FAMILIES, build_tiny, tiny_config
from lmmops.models.tokenizer import build_tokenizer, non_text_token_ids

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "ICLItem",
    "ModelAdapter",
    "ModelLoadError",
    "PromptAlignmentError",
    "PromptBatch",
    "UnsupportedModelError",
    "adapter_class_for",
    "adapter_for",
    "build_tiny",
    "build_tokenizer",
    "family_of",
    "load_model",
    "non_text_token_ids",
    "supported_families",
    "tiny_config",
]
