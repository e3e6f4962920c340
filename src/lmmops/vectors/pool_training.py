"""Training one vector set per task pool with validation-only selection (the `live` and `mimic` stages).

Per pool (lmmops.vectors.pools), `train_and_select` runs `distill()` on the pool's train items with a k-shot
teacher (demos re-drawn at random, with replacement, from the same pool: "RS-within-task") in `rounds` equal
segments of ONE schedule (each segment resumes the previous one's checkpoint, so the learning-rate schedule is the
full run's; `stop_after` ends a segment); after each segment the vectors are scored on the pool's VALIDATION
items, and the best-scoring segment end is kept (ties: the later one). Each segment end's vectors are kept beside
the checkpoint (`round-<step>.pt`), so a stage that resumes after its last segment (e.g. it failed while
registering) selects exactly as an uninterrupted run. `train_pools` does that for every pool, in `workers`
processes on CPU (lmmops.vectors.workers).

Use (what `lmmops.stages.vectors` does):
    training = train_pools(dcfg, model, processor, pools, rounds=3, checkpoint_dir=..., eval_kw=..., workers=2,
                           model_spec="models/base")

Run: `python -m pytest tests/vectors/test_stages.py -q`.
Departure from the papers: the selection checkpoints are `rounds` evenly spaced points of one run (the MimIC
reference picks the best epoch on the evaluation split itself, a defect docs/methods.md §7 names).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmmops.data.schemas import VQAItem
from lmmops.models import adapter_for
from lmmops.vectors.base import VectorSet
from lmmops.vectors.evaluation import evaluate_with_decoding
from lmmops.vectors.train import METHODS, DistillConfig, distill
from lmmops.vectors.workers import map_in_workers, worker_model

log = logging.getLogger(__name__)


@dataclass
class PoolTraining:
    """One pool's selected vector set and how it was chosen (validation accuracies only)."""

    pool: str
    vectors: VectorSet
    step: int  # the segment end that was selected
    val_acc: float
    rounds: list[dict[str, float]]  # per segment end: step, val_acc, loss
    total_steps: int
    train_seconds: float
    resumed_from: int
    key: str  # the distill checkpoint key
    history: list[dict[str, float]] = field(default_factory=list)


def segment_ends(total: int, rounds: int) -> list[int]:
    """`rounds` evenly spaced steps ending at `total` (fewer when total < rounds), increasing, unique."""
    if rounds < 1:
        raise ValueError(f"selection rounds must be >= 1, got {rounds}")
    return sorted({max(1, round(total * r / rounds)) for r in range(1, rounds + 1)})


def _snapshot_path(checkpoint: Path, step: int) -> Path:
    return checkpoint.parent / f"round-{step:06d}.pt"


def train_and_select(
    cfg: DistillConfig,
    model: nn.Module,
    processor: Any,
    train_items: Sequence[VQAItem],
    *,
    rounds: int,
    checkpoint_dir: Path,
    pool: str = "",
    evaluate_val: Callable[[VectorSet], float],
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
) -> PoolTraining:
    """Train one pool's vectors in `rounds` segments of one schedule; keep the segment end best on validation.

    `evaluate_val(vectors) -> accuracy` must score on the validation split only (the caller's promise; the test
    split is never seen here). `on_log(step, metrics)` gets each logged training step once, also across the
    segments' resumes (distill replays restored history; the replays are dropped here).
    """
    total = cfg.train.steps
    logged: set[int] = set()

    def log_once(step: int, values: dict[str, float]) -> None:
        if on_log is not None and step not in logged:
            logged.add(step)
            on_log(step, values)

    rounds_out: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    result = None
    resumed_from: int | None = None
    for end in segment_ends(total, rounds):
        result = distill(cfg, model, processor, train_items, checkpoint_dir=checkpoint_dir, on_log=log_once,
                         stop_after=end, progress=progress)
        resumed_from = result.resumed_from if resumed_from is None else resumed_from
        assert result.checkpoint is not None
        snapshot = _snapshot_path(result.checkpoint, end)
        vectors = result.vectors
        if result.steps == end:
            if int(os.environ.get("RANK", "0") or 0) == 0:  # under a launcher rank 0 writes files, as distill does
                torch.save({k: v.detach().cpu() for k, v in vectors.state_dict().items()}, snapshot)
        elif snapshot.is_file():  # the checkpoint is past this segment end (a resumed stage): its saved vectors
            vectors.load_state_dict(torch.load(snapshot, map_location="cpu", weights_only=True))
        else:  # an earlier run saved other segment ends: retrain up to this one without touching its checkpoint
            log.warning("%s %s: no vectors saved at step %d in %s; retraining to it", cfg.method, pool, end,
                        snapshot.parent)
            vectors = distill(cfg, model, processor, train_items, checkpoint_dir=None, stop_after=end,
                              progress=progress).vectors
        acc = float(evaluate_val(vectors))
        loss = next((h["loss"] for h in reversed(result.history) if h["step"] <= end), float("nan"))
        rounds_out.append({"step": float(end), "val_acc": acc, "loss": float(loss)})
        if best is None or acc >= best[0]:  # ties: the later (longer-trained) segment end
            best = (acc, end, {k: v.detach().clone() for k, v in vectors.state_dict().items()})
    assert best is not None and result is not None
    selected = copy.deepcopy(result.vectors)
    selected.load_state_dict(best[2])
    return PoolTraining(pool=pool, vectors=selected, step=best[1], val_acc=best[0], rounds=rounds_out,
                        total_steps=total, train_seconds=result.train_seconds, resumed_from=resumed_from or 0,
                        key=result.key, history=list(result.history))


def train_pools(
    cfg: DistillConfig,
    model: nn.Module,
    processor: Any,
    pools: Mapping[str, Mapping[str, Sequence[VQAItem]]],
    *,
    rounds: int,
    checkpoint_dir: Path,
    eval_kw: Mapping[str, Any],
    workers: int = 1,
    model_spec: str | None = None,
    on_log: Callable[[str, int, dict[str, float]], None] | None = None,
    on_pool: Callable[[PoolTraining], None] | None = None,
    progress: bool = True,
) -> dict[str, PoolTraining]:
    """`train_and_select` every pool (its train items; selection on its val items with
    `evaluate_with_decoding(..., **eval_kw)`), in the order of `pools`.

    `workers` > 1 trains the pools in that many spawned processes, each loading the base model from `model_spec`
    once (CPU only; the caller decides). The pools are independent and a pool's training is a function of its
    config, items, seed and the base weights only (single-threaded float work gives the same bits), so the
    vectors, selections and histories equal the sequential run's (tests/vectors/test_stages.py checks it). Why:
    one pool's steps are tiny single-threaded forwards, so a 2-core machine otherwise leaves a core idle. In the
    workers `on_log(pool, step, metrics)` is replayed from each pool's history when that pool is done (live
    otherwise); `on_pool(result)` follows each pool, in completion order with workers.
    """
    names = list(pools)
    if workers <= 1 or len(names) <= 1:
        out: dict[str, PoolTraining] = {}
        for pool in names:
            items = pools[pool]

            def evaluate_val(vectors: VectorSet, val: Sequence[VQAItem] = items["val"]) -> float:
                return float(evaluate_with_decoding(model, processor, vectors, val, **eval_kw)["accuracy"])

            def log_pool(step: int, values: dict[str, float], pool: str = pool) -> None:
                if on_log is not None:
                    on_log(pool, step, values)

            out[pool] = train_and_select(cfg, model, processor, items["train"], rounds=rounds,
                                         checkpoint_dir=checkpoint_dir, pool=pool, evaluate_val=evaluate_val,
                                         on_log=log_pool, progress=progress)
            if on_pool is not None:
                on_pool(out[pool])
        return out

    if model_spec is None:
        raise ValueError("train_pools: workers > 1 needs model_spec (each worker loads the base model from it)")
    done: dict[str, PoolTraining] = {}

    def finish(state: dict[str, Any]) -> None:
        vectors = METHODS[cfg.method].for_adapter(adapter_for(model, processor), seed=cfg.seed)
        vectors.load_state_dict(state.pop("vectors"))
        result = PoolTraining(vectors=vectors, **state)
        done[result.pool] = result
        if on_log is not None:
            for entry in result.history:
                on_log(result.pool, int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})
        if on_pool is not None:
            on_pool(result)
        bar.update(1)

    bar = tqdm(total=len(names), desc=f"{cfg.method} pools ({workers} processes)", disable=not progress,
               dynamic_ncols=True)
    try:
        map_in_workers(_worker_train, [(cfg, pool, {s: list(v) for s, v in pools[pool].items()}, rounds,
                                        str(checkpoint_dir), dict(eval_kw)) for pool in names],
                       model_spec=model_spec, threads=cfg.threads, workers=min(workers, len(names)), on_result=finish)
    finally:
        bar.close()
    return {pool: done[pool] for pool in names}


def _worker_train(cfg: DistillConfig, pool: str, items: dict[str, list[VQAItem]], rounds: int, checkpoint_dir: str,
                  eval_kw: dict[str, Any]) -> dict[str, Any]:
    """One pool's `train_and_select` in a worker process (`map_in_workers`): a picklable summary back."""
    model, processor = worker_model()

    def evaluate_val(vectors: VectorSet) -> float:
        return float(evaluate_with_decoding(model, processor, vectors, items["val"], **eval_kw)["accuracy"])

    result = train_and_select(cfg, model, processor, items["train"], rounds=rounds, checkpoint_dir=Path(checkpoint_dir),
                              pool=pool, evaluate_val=evaluate_val, progress=False)
    state = {f.name: getattr(result, f.name) for f in fields(PoolTraining) if f.name != "vectors"}
    return {**state, "vectors": {k: v.detach().cpu() for k, v in result.vectors.state_dict().items()}}
