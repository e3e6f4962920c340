"""The baselines of LIVE and MimIC (docs/methods.md §7): LoRA, task vectors, function vectors, ICV.

For one task pool (VQAItems of one task from the train split) each baseline is fitted on the frozen base model,
with any choice (layer, strength, epoch) made on the validation items the caller passes, and evaluated on
query-only prompts: the zero-shot template, the same instruction and the same generation path (ICLRunner via
`lmmops.vectors.train.evaluate_vectors`) as LIVE and MimIC.

    from lmmops.vectors.baselines import fit_baseline, evaluate_baseline
    fitted = fit_baseline("task_vector", cfg, model, processor, train_items, val_items)   # cfg: VectorBaselinesConfig
    fitted.trainable_params, fitted.choice          # size of what it adds; what validation chose
    with fitted.applied(model):                     # the intervention in place; the model is unchanged after
        ...
    evaluate_baseline(fitted, model, processor, test_items)   # {"accuracy": ..., "queries": ..., ...}

  lora             peft LoRA r 16, alpha 32, dropout 0.05 on the q/k/v/o that `lora.scope` names, lr 5e-4,
                   trained query -> answer (answer-only LM loss); best epoch on val          (`lora`)
  task_vector      Hendel et al. 2023: mean last-token hidden state of k-shot prompts at layer L, patched over
                   the zero-shot run's last prompt token at layer L (prefill only); L on val (`task_vector`)
  function_vector  Todd et al. 2024: top-K heads by average indirect effect on shuffled-label prompts, their
                   mean outputs through o_proj summed, added at layer L at the last prompt token and at
                   generated tokens; L on val                                                (`function_vector`)
  icv              Liu et al. 2023: per-layer rank-1 PCA of h(query + answer) - h(query) at the last token,
                   steering every layer's output at every token with norm preservation; lambda on val (`icv`)

`trainable_params`: LoRA's adapter scalars; for the vector methods the size of what they add: d for the task
and function vectors (one vector), L*d for ICV (one direction per layer). Nothing but LoRA is trained.

Every intervention goes through the family adapter (`lmmops.models.adapter_for`: decoder layers, self-attention
modules and their projections, prompts); nothing here names a model family. Hooks are whole-tensor operations.

Run: `lmmops vector-baselines` (the stage, `lmmops.stages.vector_baselines`);
`python -m pytest tests/vectors/test_baselines.py -q`.

Departures from the papers: listed in each module's docstring (choices on our validation split; ICV per layer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmmops.config import VectorBaselinesConfig
from lmmops.data.schemas import VQAItem
from lmmops.models import ModelAdapter, adapter_for
from lmmops.vectors.base import frozen
from lmmops.vectors.baselines.common import (
    accuracy_with,
    check_layers,
    kshot_prompts,
    last_token_head_outputs,
    select_on_val,
)
from lmmops.vectors.baselines.function_vector import (
    attach_function_vector,
    function_vector_from_heads,
    head_indirect_effects,
    shuffled_labels,
)
from lmmops.vectors.baselines.icv import attach_icv, icv_directions, icv_shift, rank1_pca_directions
from lmmops.vectors.baselines.lora import injected_lora, lora_config, lora_target_names, train_lora
from lmmops.vectors.baselines.task_vector import attach_task_vector, task_vector_candidates
from lmmops.vectors.data import DemoPool
from lmmops.vectors.train import evaluate_vectors

BASELINES: tuple[str, ...] = ("lora", "task_vector", "function_vector", "icv")
Attach = Callable[[nn.Module, ModelAdapter], AbstractContextManager[Any]]


@dataclass
class FittedBaseline:
    """One fitted baseline: what it adds (`tensors`), its size, what validation chose, how to attach it."""

    name: str
    trainable_params: int
    tensors: dict[str, torch.Tensor]
    choice: dict[str, Any]
    instruction: str | None
    attach: Attach = field(repr=False)

    @contextmanager
    def applied(self, model: nn.Module, processor: Any = None) -> Iterator[nn.Module]:
        """The intervention in place on `model` (frozen) inside the block; removed after, even on error."""
        adapter = adapter_for(model, processor)
        with frozen(model), self.attach(model, adapter):
            yield model


def _val_accuracy(cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, val_items: Sequence[VQAItem],
                  attach: Attach, adapter: ModelAdapter) -> float:
    return accuracy_with(model, processor, val_items, lambda: attach(model, adapter), instruction=cfg.instruction,
                         batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)


def _fit_lora(cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, adapter: ModelAdapter,
              train: list[VQAItem], val: list[VQAItem]) -> FittedBaseline:
    if cfg.lora.epochs < 1 or cfg.lora.batch_size < 1:
        raise ValueError(f"lora.epochs and lora.batch_size must be >= 1, got {cfg.lora.epochs}, {cfg.lora.batch_size}")
    state, count, choice = train_lora(cfg, model, processor, adapter, train, val)
    config = lora_config(cfg, lora_target_names(model, adapter, scope=cfg.lora.scope))

    def attach(m: nn.Module, _adapter: ModelAdapter) -> AbstractContextManager[Any]:
        return injected_lora(m, config, state)

    return FittedBaseline("lora", count, state, choice, cfg.instruction, attach)


def _fit_task_vector(cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, adapter: ModelAdapter,
                     train: list[VQAItem], val: list[VQAItem]) -> FittedBaseline:
    layers = check_layers(cfg.task_vector.layers, adapter.num_layers, "task_vector")
    candidates = task_vector_candidates(model, adapter, DemoPool(train), cfg)

    def attach_at(layer: int) -> Attach:
        return lambda _m, a: attach_task_vector(a, candidates[layer], layer)

    layer, scores = select_on_val(layers, lambda layer: _val_accuracy(cfg, model, processor, val,
                                                                       attach_at(layer), adapter))
    choice = {"layer": layer, "val_accuracy": max(scores), "val_accuracy_per_layer": dict(zip(layers, scores,
                                                                                               strict=True))}
    vector = candidates[layer].clone()
    return FittedBaseline("task_vector", vector.numel(), {"vector": vector}, choice, cfg.instruction,
                          lambda _m, a: attach_task_vector(a, vector, layer))


def _fit_function_vector(cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, adapter: ModelAdapter,
                         train: list[VQAItem], val: list[VQAItem]) -> FittedBaseline:
    fv = cfg.function_vector
    layers = check_layers(fv.layers, adapter.num_layers, "function_vector")
    pool = DemoPool(train)
    clean = kshot_prompts(pool, shots=cfg.shots, count=fv.prompts, seed=cfg.seed)
    with torch.no_grad():
        mean_heads = last_token_head_outputs(model, adapter, clean, instruction=cfg.instruction,
                                             batch_size=cfg.batch_size).mean(dim=1)  # (layers, heads, head_dim)
    corrupted = shuffled_labels(kshot_prompts(pool, shots=cfg.shots, count=fv.corrupted_prompts, seed=cfg.seed,
                                              stream=1), seed=cfg.seed)
    scores = head_indirect_effects(model, adapter, corrupted, mean_heads, instruction=cfg.instruction,
                                   batch_size=cfg.batch_size)
    vector, heads = function_vector_from_heads(adapter, mean_heads, scores, fv.heads)

    def attach_at(layer: int) -> Attach:
        return lambda _m, a: attach_function_vector(a, vector, layer, on_generated=fv.on_generated)

    layer, val_scores = select_on_val(layers, lambda layer: _val_accuracy(cfg, model, processor, val,
                                                                           attach_at(layer), adapter))
    choice = {"layer": layer, "heads": [list(h) for h in heads], "head_aie": scores.tolist(),
              "val_accuracy": max(val_scores), "val_accuracy_per_layer": dict(zip(layers, val_scores, strict=True)),
              "on_generated": fv.on_generated}
    return FittedBaseline("function_vector", vector.numel(), {"vector": vector, "mean_heads": mean_heads}, choice,
                          cfg.instruction, attach_at(layer))


def _fit_icv(cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, adapter: ModelAdapter,
             train: list[VQAItem], val: list[VQAItem]) -> FittedBaseline:
    if not cfg.icv.strengths:
        raise ValueError("icv.strengths needs at least one lambda")
    directions = icv_directions(model, adapter, DemoPool(train), cfg)

    def attach_with(strength: float) -> Attach:
        return lambda _m, a: attach_icv(a, directions, strength)

    strength, scores = select_on_val(sorted(cfg.icv.strengths), lambda s: _val_accuracy(cfg, model, processor, val,
                                                                                         attach_with(s), adapter))
    choice = {"strength": strength, "val_accuracy": max(scores),
              "val_accuracy_per_strength": dict(zip(sorted(cfg.icv.strengths), scores, strict=True))}
    return FittedBaseline("icv", directions.numel(), {"directions": directions}, choice, cfg.instruction,
                          attach_with(strength))


_FITTERS = {"lora": _fit_lora, "task_vector": _fit_task_vector, "function_vector": _fit_function_vector,
            "icv": _fit_icv}


def fit_baseline(name: str, cfg: VectorBaselinesConfig, model: nn.Module, processor: Any,
                 train_items: Sequence[VQAItem], val_items: Sequence[VQAItem]) -> FittedBaseline:
    """Fit baseline `name` on one task's `train_items`, choosing on `val_items` only (see the module docstring).

    The base model is left as it was found: weights bit-identical, requires_grad flags and train/eval mode
    restored. `cfg.threads` is not applied here (the caller owns the process's thread count).
    """
    if name not in _FITTERS:
        raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    if not val_items:
        raise ValueError(f"{name}: the validation split of this pool is empty (every choice is made on it)")
    adapter = adapter_for(model, processor)
    was_training = model.training
    model.eval()
    try:
        with frozen(model):
            return _FITTERS[name](cfg, model, processor, adapter, list(train_items), list(val_items))
    finally:
        model.train(was_training)


def timed_evaluation(model: nn.Module, processor: Any, items: Sequence[VQAItem], *, instruction: str | None,
                     batch_size: int = 32, max_new_tokens: int = 8, repeats: int = 1,
                     samples_out: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """`evaluate_vectors(model, processor, None, items)` (whatever is attached to `model` acts) plus `seconds`: the
    best wall time of `repeats` identical runs of the generation (greedy, so the answers do not change; the
    metrics are the first run's)."""

    best, result = math.inf, None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        out = evaluate_vectors(model, processor, None, items, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               instruction=instruction, samples_out=samples_out if result is None else None)
        best = min(best, time.perf_counter() - started)
        result = result or out
    assert result is not None
    return {**result, "seconds": best}


def evaluate_baseline(fitted: FittedBaseline, model: nn.Module, processor: Any, items: Sequence[VQAItem], *,
                      batch_size: int = 32, max_new_tokens: int = 8, repeats: int = 1,
                      samples_out: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """VQA accuracy of greedy zero-shot answers with `fitted` applied (`evaluate_vectors`' path and metrics:
    accuracy, queries, accuracy/<question_type>), with the instruction it was fitted with; `seconds` is the best
    wall time of `repeats` runs of that generation alone (attaching and removing the intervention not included)."""
    with fitted.applied(model, processor):
        return timed_evaluation(model, processor, items, instruction=fitted.instruction, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, repeats=repeats, samples_out=samples_out)


__all__ = [
    "BASELINES",
    "FittedBaseline",
    "attach_function_vector",
    "attach_icv",
    "attach_task_vector",
    "evaluate_baseline",
    "fit_baseline",
    "icv_shift",
    "injected_lora",
    "lora_target_names",
    "rank1_pca_directions",
    "timed_evaluation",
]
