"""lmmops.vectors: in-context vectors (LIVE, MimIC), the exact shift oracle, vector files, parameter counts.

Public API:
  LiveVectors, attach_live(model, vectors), live_loss(...)          LIVE (docs/methods.md §5), `live`
  MimicVectors, attach_mimic(model, vectors), mimic_loss(...)       MimIC (docs/methods.md §6), `mimic`
  aligned_hidden(hidden, mask), capture_outputs(modules), frozen(model)
  attention_shifts(adapter, shifts), attention_with_lse(...)        the "lmmops_mimic" attention function
  check_shift_exactness(model, processor, demos, query)             the shift identity (docs/methods.md §4), `oracle`
  save_vectors / load_vectors / read_metadata                       vector files, `files`
  params_table(), format_params_table(rows), lora_parameter_count   `lmmops params-table`, `params`
  VectorMismatchError (ValueError)
  DistillConfig, distill(cfg, model, processor, train_items) -> DistillResult      the LIVE / MimIC loop, `train`
  evaluate_vectors(model, processor, vectors, items), NonFiniteLossError            (demo sampling: `data`)
  pools: task_pools, select_pools; pool_training: train_pools, train_and_select (val-only selection)
  evaluation: score_icl_reference, evaluate_test; icl_reference: the icl-reference stage's output, checked
  reporting: stage_metrics, results_markdown; workers: map_in_workers      the icl-reference / live / mimic stages
  bundle: save_bundle / load_bundle / VectorBundle.answer                         every pool's vectors + manifest

Everything reaches the model through `lmmops.models.adapter_for`; nothing here knows a model family.

Run: `python -m pytest tests/vectors -q`; `lmmops params-table`.

Departures from the papers and reference code: see each module's docstring (answer-only LM loss for LIVE,
masked logZ2 for MimIC, eager-style scores instead of a fused kernel).
"""

from lmmops.vectors.attention import AttentionCall, attention_shifts, attention_with_lse
from lmmops.vectors.base import LossParts, VectorMismatchError, VectorSet, capture_outputs, frozen, model_signature
from lmmops.vectors.files import load_vectors, read_metadata, save_vectors
from lmmops.vectors.live import LiveVectors, attach_live, live_loss, live_shift, live_site_modules
from lmmops.vectors.mimic import MimicShift, MimicVectors, aligned_hidden, attach_mimic, mimic_loss
from lmmops.vectors.oracle import ShiftExactness, check_shift_exactness
from lmmops.vectors.params import (
    REFERENCE_CONFIGS,
    ParamsRow,
    build_on_meta,
    format_params_table,
    lora_breakdown,
    lora_parameter_count,
    parameter_counts,
    params_table,
)
from lmmops.vectors.train import (
    DistillConfig,
    DistillResult,
    NonFiniteLossError,
    distill,
    evaluate_vectors,
)

__all__ = [
    "REFERENCE_CONFIGS",
    "AttentionCall",
    "DistillConfig",
    "DistillResult",
    "LiveVectors",
    "LossParts",
    "MimicShift",
    "MimicVectors",
    "NonFiniteLossError",
    "ParamsRow",
    "ShiftExactness",
    "VectorMismatchError",
    "VectorSet",
    "aligned_hidden",
    "attach_live",
    "attach_mimic",
    "attention_shifts",
    "attention_with_lse",
    "build_on_meta",
    "capture_outputs",
    "check_shift_exactness",
    "distill",
    "evaluate_vectors",
    "format_params_table",
    "frozen",
    "live_loss",
    "live_shift",
    "live_site_modules",
    "load_vectors",
    "lora_breakdown",
    "lora_parameter_count",
    "mimic_loss",
    "model_signature",
    "parameter_counts",
    "params_table",
    "read_metadata",
    "save_vectors",
]
