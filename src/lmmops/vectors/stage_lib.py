"""The library behind the `live` and `mimic` stages: task pools, training with validation-only selection, the
test-split evaluation (vectors, zero-shot, k-shot ICL, latency) and the results table.

What it does, per pool (each ICL task family of the train split, plus "vqa": the ordinary, non-ICL questions):
  1. `train_and_select`: `distill()` the method's vector set on the pool's train items with a k-shot teacher
     (demos re-drawn at random, with replacement, from the same pool: "RS-within-task"), in `rounds` equal
     segments of ONE schedule (each segment resumes the previous one's checkpoint, so the learning-rate schedule
     is the full run's, `stop_after` ends a segment); after each segment the vectors are scored on the pool's
     VALIDATION items, and the best-scoring segment end is kept (ties: the later one).
  2. `evaluate_test`: after every pool is trained, each selected vector set answers its pool's TEST items once;
     the same test items are answered zero-shot (`evaluate_vectors(..., None)`) and with k random demos from the
     pool's train items (ICLRunner, the same template, instruction and decoding as the vectors' inference; each
     query under `icl_draws` independent demo draws, scored by its mean over them), and
     the generation with vectors and zero-shot is timed at the same batch size (best of `repeats`, interleaved,
     so drifting machine load hits both alike; k-shot ICL, several times slower, is timed by its scored run)
     for the latency ratios. The ICL reference can be kept on disk (`icl_cache_dir`, keyed by
     `icl_reference_key`) for the other vector stage to read back.
  3. `stage_metrics` / `results_markdown`: every test accuracy (and gap) also without the near-duplicate test
     items (`nodup_metrics`: keys <family>_nodup/<pool>, the same per-item scores filtered; a second table).
Each segment end's vectors are kept beside the checkpoint (`round-<step>.pt`), so a stage that resumes after its
last segment (e.g. it failed while registering) selects exactly as an uninterrupted run.

Use (what `lmmops.stages.vectors` does):
    pools = select_pools(splits, tasks=(), shots=16, where="live.tasks")
    training = train_pools(dcfg, model, processor, pools, rounds=3, checkpoint_dir=..., eval_kw=..., workers=2,
                           model_spec="models/base")     # train_and_select per pool, in 2 processes on CPU
    test = evaluate_test(model, processor, {p: t.vectors for p, t in training.items()}, pools, shots=16, ...)

Run: `python -m pytest tests/vectors/test_stages.py -q`.

Departures from the papers: one vector set per synthetic task family (the papers train one per dataset); the
selection checkpoints are `rounds` evenly spaced points of one run (the MimIC reference picks the best epoch on
the evaluation split itself, a defect PAPERS.md §4 names); k-shot ICL here draws its k demos without replacement
(the papers' RS) `icl_draws` times per test query and averages, where the papers report one draw (or a few
seeds of the whole evaluation).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lmmops.data.icl_tasks import group_by_task
from lmmops.data.schemas import VQAItem
from lmmops.vectors.base import VectorSet
from lmmops.vectors.train import DistillConfig, attached, distill, evaluate_vectors

log = logging.getLogger(__name__)

VQA_POOL = "vqa"  # the ordinary (non-ICL) VQA questions as one pool
TEACHER_STRATEGY = "RS-within-task"  # teacher demos: random, with replacement, from the query's own pool
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------------
# pools


def task_pools(items: Sequence[VQAItem]) -> dict[str, list[VQAItem]]:
    """{pool: items}: the ICL task families present (lmmops.data.icl_tasks order), then "vqa" when present."""
    pools = group_by_task(items)
    ordinary = [it for it in items if not it.is_icl]
    if ordinary:
        pools[VQA_POOL] = ordinary
    return pools


def select_pools(
    splits: Mapping[str, Sequence[VQAItem]], tasks: Sequence[str] = (), *, shots: int, where: str = "tasks"
) -> dict[str, dict[str, list[VQAItem]]]:
    """{pool: {split: items}} for the pools in `tasks` (empty: every pool of the train split).

    Raises ValueError, before anything is trained, naming the pool (and `where`, e.g. "live.tasks") when a pool
    is unknown, has fewer than `shots` + 1 train items (the teacher's demos exclude the query; the k-shot baseline
    draws `shots` distinct ones) or has no val or no test items (nothing to select on or to report).
    """
    by_split = {split: task_pools(splits[split]) for split in SPLITS}
    known = list(by_split["train"])
    names = list(tasks) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{where}: unknown task pool {unknown[0]!r}; the train split has: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: a pool is listed twice: {names}")
    out: dict[str, dict[str, list[VQAItem]]] = {}
    for name in names:
        train = by_split["train"][name]
        if len(train) < shots + 1:
            raise ValueError(f"{where}: pool {name!r} has {len(train)} train items; {shots}-shot teachers need at "
                             f"least {shots + 1}")
        for split in ("val", "test"):
            if not by_split[split].get(name):
                raise ValueError(f"{where}: pool {name!r} has no {split} items")
        out[name] = {split: list(by_split[split][name]) for split in SPLITS}
    return out


# ----------------------------------------------------------------------------------------------------
# training with validation-only selection


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
    total = cfg.total_steps(len(train_items))
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


def _evaluate_vectors(model: nn.Module, processor: Any, vectors: VectorSet | None, items: Sequence[VQAItem], *,
                      num_beams: int = 1, answer_cut: Sequence[str] = (), **kw: Any) -> dict[str, float]:
    """`evaluate_vectors(..., **kw)` under the stage's decoding (`num_beams`, `answer_cut`; its runner reads the
    `decoding` scope), so that vectors, zero-shot and ICL are scored alike."""
    from lmmops.icl.inference import decoding

    with decoding(num_beams, answer_cut):
        return evaluate_vectors(model, processor, vectors, items, **kw)


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
    """`train_and_select` every pool (its train items; selection on its val items with `evaluate_vectors(...,
    **eval_kw)`), in the order of `pools`.

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
                return float(_evaluate_vectors(model, processor, vectors, val, **eval_kw)["accuracy"])

            def log_pool(step: int, values: dict[str, float], pool: str = pool) -> None:
                if on_log is not None:
                    on_log(pool, step, values)

            out[pool] = train_and_select(cfg, model, processor, items["train"], rounds=rounds,
                                         checkpoint_dir=checkpoint_dir, pool=pool, evaluate_val=evaluate_val,
                                         on_log=log_pool, progress=progress)
            if on_pool is not None:
                on_pool(out[pool])
        return out

    from lmmops.models import adapter_for
    from lmmops.vectors.train import METHODS

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


def map_in_workers(job: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], *, model_spec: str, threads: int,
                   workers: int, on_result: Callable[[Any], None]) -> None:
    """`job(*args)` for every `args` in `jobs`, in `workers` spawned processes that each load the base model once
    (`start_worker`; `worker_model()` inside `job`). Submitted in the order of `jobs`; `on_result(result)` as each
    finishes (completion order); a job's exception is raised here and the rest are cancelled."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(model_spec, threads))
    try:
        pending = {executor.submit(job, *args) for args in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                on_result(future.result())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}


def start_worker(model_spec: str, threads: int) -> None:
    """Process-pool initializer: load the base model once per worker process (`train_pools`, and the
    vector-baselines stage); `worker_model()` returns it in the worker's jobs."""
    from lmmops.models import load_model

    torch.set_num_threads(threads)
    _WORKER["model"], _WORKER["processor"] = load_model(model_spec)


def worker_model() -> tuple[nn.Module, Any]:
    """The (model, processor) that `start_worker` loaded in this worker process."""
    if "model" not in _WORKER:
        raise RuntimeError("worker_model() outside a process started with start_worker")
    return _WORKER["model"], _WORKER["processor"]


def _worker_train(cfg: DistillConfig, pool: str, items: dict[str, list[VQAItem]], rounds: int, checkpoint_dir: str,
                  eval_kw: dict[str, Any]) -> dict[str, Any]:
    model, processor = worker_model()

    def evaluate_val(vectors: VectorSet) -> float:
        return float(_evaluate_vectors(model, processor, vectors, items["val"], **eval_kw)["accuracy"])

    result = train_and_select(cfg, model, processor, items["train"], rounds=rounds, checkpoint_dir=Path(checkpoint_dir),
                              pool=pool, evaluate_val=evaluate_val, progress=False)
    state = {f.name: getattr(result, f.name) for f in fields(PoolTraining) if f.name != "vectors"}
    return {**state, "vectors": {k: v.detach().cpu() for k, v in result.vectors.state_dict().items()}}


# ----------------------------------------------------------------------------------------------------
# the test split, once


def icl_demos(query: VQAItem, pool: Sequence[VQAItem], shots: int, *, seed: int, index: int,
              draw: int = 0) -> list[VQAItem]:
    """`shots` distinct random demos for the `index`-th query from its pool's train items (never the query);
    `draw` numbers independent demo sets for the same query (draw 0 is the one earlier versions used)."""
    candidates = [d for d in pool if d.question_id != query.question_id]
    rng = np.random.default_rng([seed, index] if draw == 0 else [seed, index, draw])
    picks = rng.choice(len(candidates), size=min(shots, len(candidates)), replace=False)
    return [candidates[int(i)] for i in picks]


def _generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: VectorSet | None,
              instruction: str | None) -> tuple[list[str], float]:
    model = runner.model
    if vectors is not None:
        vectors.to(next(model.parameters()).device)
    t0 = time.perf_counter()
    with attached(model, vectors, runner.adapter) if vectors is not None else nullcontext():
        answers = runner.predict(prompts, instruction=instruction, desc="timing")
    return answers, time.perf_counter() - t0


def generation_seconds(
    model: nn.Module,
    processor: Any,
    runs: Mapping[str, tuple[list[tuple[list[VQAItem], VQAItem]], VectorSet | None]],
    *,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    repeats: int,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
) -> dict[str, float]:
    """Best-of-`repeats` wall time of generating each named run's prompts (with its vectors attached, or plain).

    The runs are interleaved within each repeat (run A, B, C, A, B, C, ...) so that a change of machine load
    affects all of them; nothing is scored (timing only).
    """
    from lmmops.icl.inference import ICLRunner

    runner = ICLRunner(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                       answer_cut=answer_cut, progress=False)
    best = {name: float("inf") for name in runs}
    for _ in range(max(1, repeats)):
        for name, (prompts, vectors) in runs.items():
            best[name] = min(best[name], _generate(runner, prompts, vectors, instruction)[1])
    return best


ICL_REFERENCE_FORMAT = 1


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def icl_reference_key(
    model: nn.Module,
    processor: Any,
    test: Sequence[VQAItem],
    train: Sequence[VQAItem],
    *,
    shots: int,
    seed: int,
    draws: int,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
    fingerprints: dict[int, str] | None = None,
) -> str:
    """Hash of everything a pool's k-shot ICL reference depends on: the base model's weights and tokenizer, the
    test and train items (ids, question, answers, image bytes), the demo draws (shots, seed, draws), decoding
    (batch size, max new tokens, instruction, threads, device, library versions) and the code that builds the
    prompts, decodes and scores. `fingerprints`: a memo of `model_fingerprint` by model id that the caller keeps
    for the model's lifetime (it reads every weight, so a stage computes it once, not once per pool)."""
    import transformers

    from lmmops.eval import metrics
    from lmmops.icl import experiment, inference
    from lmmops.vectors.train import _prompt_code_files, model_fingerprint

    def rows(items: Sequence[VQAItem]) -> list[list[Any]]:
        return [[it.question_id, it.question, it.multiple_choice_answer, list(it.answer_strings),
                 it.image_path.name, _file_digest(Path(it.image_path))] for it in items]

    code = [_file_digest(Path(f)) for f in (__file__, inference.__file__, experiment.__file__, metrics.__file__,
                                             *_prompt_code_files())]
    param = next(model.parameters())
    memo = fingerprints if fingerprints is not None else {}
    if id(model) not in memo:
        memo[id(model)] = model_fingerprint(model, processor)
    fingerprint = memo[id(model)]
    blob = {"format": ICL_REFERENCE_FORMAT, "model": fingerprint, "test": rows(test),
            "train": rows(train), "shots": shots, "seed": seed, "draws": draws, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "num_beams": num_beams, "answer_cut": list(answer_cut),
            "instruction": instruction, "threads": torch.get_num_threads(),
            "device": str(param.device), "dtype": str(param.dtype), "torch": torch.__version__,
            "transformers": transformers.__version__, "code": code}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_icl_reference(path: Path) -> tuple[list[float] | None, float]:
    """(per-query ICL scores, best generation seconds) kept at `path`, or (None, inf) when there is none or it is
    unreadable (then it is recomputed and rewritten)."""
    try:
        kept = json.loads(path.read_text())
        if kept.get("format") != ICL_REFERENCE_FORMAT or kept.get("key") != path.stem:
            return None, float("inf")
        return [float(a) for a in kept["item_acc"]], float(kept["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, float("inf")


def write_icl_reference(path: Path, pool: str, item_acc: Sequence[float], seconds: float) -> None:
    """Keep a pool's ICL reference at `path` (written to a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": ICL_REFERENCE_FORMAT, "key": path.stem, "pool": pool,
                               "item_acc": list(item_acc), "seconds": seconds}) + "\n")
    os.replace(tmp, path)


@dataclass
class TestResult:
    """Per pool: test accuracy with the selected vectors, zero-shot and k-shot ICL; generation seconds."""

    vector_acc: dict[str, float]
    zero_shot_acc: dict[str, float]
    icl_acc: dict[str, float]
    seconds: dict[str, dict[str, float]]  # pool -> {"zero-shot", "vectors", "icl"} -> best seconds
    samples: dict[str, list[dict[str, Any]]]  # pool -> predictions of the vectors on the test items
    # pool -> (ICL minus vectors, mean over the test items, its paired standard error)
    gap: dict[str, tuple[float, float]] = field(default_factory=dict)
    # pool -> {"vectors", "zero-shot", "icl"} -> per-test-item scores (the accuracies above are their means)
    item_acc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # pool -> per test item: a near-duplicate of a train item (VQAItem.near_duplicate_of; synthetic data only)
    near_duplicate: dict[str, list[bool]] = field(default_factory=dict)

    def latency_rel(self, which: str) -> float:
        """Generation time of `which` ("vectors" or "icl") over zero-shot, summed over pools."""
        zero = sum(s["zero-shot"] for s in self.seconds.values())
        return sum(s[which] for s in self.seconds.values()) / zero if zero > 0 else float("nan")


def evaluate_test(
    model: nn.Module,
    processor: Any,
    vectors: Mapping[str, VectorSet],
    pools: Mapping[str, Mapping[str, Sequence[VQAItem]]],
    *,
    shots: int,
    seed: int,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    repeats: int,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
    icl_draws: int = 1,
    icl_cache_dir: str | Path | None = None,
) -> TestResult:
    """Score each pool's selected `vectors` on its test items (once), next to zero-shot and `shots`-shot ICL.

    k-shot ICL is scored over `icl_draws` independent demo draws per test query, and each query's ICL score is
    its mean over the draws: the expected k-shot accuracy under random demos, which one draw estimates with
    the extra variance of the draw (on ~27 items a pool's single-draw accuracy moves by several points with
    the draw alone). The vectors and zero-shot are deterministic (greedy), so they are scored once.
    With `icl_cache_dir`, each pool's ICL reference (per-query scores and its best generation time) is kept
    there under `icl_reference_key` and read back by the next stage that asks for the same one: the live and
    mimic stages score the same 16-shot reference (~35 s on the default), and greedy decoding makes it a
    memo, not an approximation.
    """
    if icl_draws < 1:
        raise ValueError(f"icl_draws must be >= 1, got {icl_draws}")
    from lmmops.eval.analysis import paired_gap
    from lmmops.icl.experiment import item_accuracy
    from lmmops.icl.inference import ICLRunner

    runner = ICLRunner(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                       answer_cut=answer_cut, progress=False)
    out = TestResult({}, {}, {}, {}, {})
    fingerprints: dict[int, str] = {}  # model_fingerprint, once for all pools
    for pool, vs in vectors.items():
        test, train = list(pools[pool]["test"]), list(pools[pool]["train"])
        samples: list[dict[str, Any]] = []
        kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "instruction": instruction,
              "num_beams": num_beams, "answer_cut": tuple(answer_cut)}
        out.vector_acc[pool] = _evaluate_vectors(model, processor, vs, test, samples_out=samples, **kw)["accuracy"]
        out.samples[pool] = samples
        zero_samples: list[dict[str, Any]] = []
        out.zero_shot_acc[pool] = _evaluate_vectors(model, processor, None, test, samples_out=zero_samples,
                                                   **kw)["accuracy"]
        cache = None
        if icl_cache_dir is not None:
            key = icl_reference_key(model, processor, test, train, shots=shots, seed=seed, draws=icl_draws,
                                    fingerprints=fingerprints, **kw)
            cache = Path(icl_cache_dir) / f"{key[:24]}.json"
        icl_item_acc, icl_seconds = read_icl_reference(cache) if cache is not None else (None, float("inf"))
        if icl_item_acc is not None:
            log.info("pool %s: %d-shot ICL reference read from %s (the same model, items, demo draws and code)",
                     pool, shots, cache)
        else:
            icl_item_acc = [0.0] * len(test)
            for draw in range(icl_draws):
                prompts = [(icl_demos(q, train, shots, seed=seed, index=i, draw=draw), q) for i, q in enumerate(test)]
                predictions, seconds = _generate(runner, prompts, None, instruction)
                icl_seconds = min(icl_seconds, seconds)  # best of the draws, like the other timings' best-of
                for i, (p, q) in enumerate(zip(predictions, test, strict=True)):
                    icl_item_acc[i] += item_accuracy(p, q) / icl_draws
            if cache is not None:
                write_icl_reference(cache, pool, icl_item_acc, icl_seconds)
        out.icl_acc[pool] = mean(icl_item_acc)
        out.gap[pool] = paired_gap(icl_item_acc, [s["accuracy"] for s in samples])
        out.item_acc[pool] = {"vectors": [float(s["accuracy"]) for s in samples],
                              "zero-shot": [float(s["accuracy"]) for s in zero_samples],
                              "icl": [float(a) for a in icl_item_acc]}
        out.near_duplicate[pool] = [q.near_duplicate_of is not None for q in test]
        zero = [([], q) for q in test]
        out.seconds[pool] = generation_seconds(
            model, processor, {"zero-shot": (zero, None), "vectors": (zero, vs)},
            batch_size=batch_size, max_new_tokens=max_new_tokens, instruction=instruction, repeats=repeats,
            num_beams=num_beams, answer_cut=answer_cut)
        # k-shot ICL costs several times zero-shot: its scored runs are its timings (best of the draws).
        out.seconds[pool]["icl"] = icl_seconds
    return out


# ----------------------------------------------------------------------------------------------------
# metrics and the results table


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def stage_metrics(
    training: Mapping[str, PoolTraining], test: TestResult, *, trainable_params: int, shots: int, icl_draws: int = 1
) -> dict[str, float]:
    """The stage's flat metrics (deterministic: no timings). Pool keys keep their names (icl/colour/en)."""
    m: dict[str, float] = {}
    for name, per_pool in (("test_acc", test.vector_acc), ("zero_shot_acc", test.zero_shot_acc),
                           ("icl_acc", test.icl_acc), ("val_acc", {p: t.val_acc for p, t in training.items()})):
        for pool, acc in per_pool.items():
            m[f"{name}/{pool}"] = float(acc)
        m[f"{name}/mean"] = mean(list(per_pool.values()))
    for pool, t in training.items():
        m[f"selected_step/{pool}"] = float(t.step)
    # gap_to_icl: how far the vectors stay below k-shot ICL (the target: <= 0.05);
    # gain_over_zero_shot: how far they lift the plain model (target: >= 0.30).
    m["gap_to_icl/mean"] = m["icl_acc/mean"] - m["test_acc/mean"]
    # Per pool: the gap on the same test items and its paired standard error, and how many items there are:
    # a pool of ~13 test items cannot resolve a 5-point gap (one item is ~8 points).
    # (No standard error for a pool of one item: metrics files and MLflow get no NaN.)
    for pool, (gap, se) in test.gap.items():
        m[f"gap_to_icl/{pool}"] = float(gap)
        m[f"test_items/{pool}"] = float(len(test.samples.get(pool, [])))
        if math.isfinite(se):
            m[f"gap_to_icl_se/{pool}"] = float(se)
    ses = [se for _, se in test.gap.values()]
    if ses and all(math.isfinite(se) for se in ses):  # disjoint pools: the mean's variance adds theirs
        m["gap_to_icl_se/mean"] = float(sum(se**2 for se in ses) ** 0.5 / len(ses))
    m["gain_over_zero_shot/mean"] = m["test_acc/mean"] - m["zero_shot_acc/mean"]
    m["trainable_params"] = float(trainable_params)
    m["pools"] = float(len(training))
    m["shots"] = float(shots)
    m["icl_draws"] = float(icl_draws)
    m.update(nodup_metrics(test))
    return m


NODUP = "_nodup"  # metric family suffix: the same test accuracy without the near-duplicates of train items


def nodup_metrics(test: TestResult) -> dict[str, float]:
    """The test accuracies of `stage_metrics` again without the near-duplicate test items (10% of the synthetic
    val/test items near-copy a train item by design; real data has none, and then both numbers are equal): the
    same per-item scores, filtered, no second model pass. Keys: <family>_nodup/<pool> and /mean for test_acc,
    zero_shot_acc, icl_acc, gap_to_icl (and gap_to_icl_se_nodup, as the original), gain_over_zero_shot_nodup/mean,
    test_items_nodup/<pool>. The means are over the pools, as the originals; a pool left without items (all of
    them near-duplicates) gets only its count (0) and stays out of the means."""
    from lmmops.eval.analysis import mean_without, paired_gap, split_by_mask

    m: dict[str, float] = {}
    families = {"test_acc": "vectors", "zero_shot_acc": "zero-shot", "icl_acc": "icl"}
    per_pool: dict[str, dict[str, float]] = {name: {} for name in families}
    ses: list[float] = []
    for pool, scores in test.item_acc.items():
        dup = test.near_duplicate.get(pool) or [False] * len(scores["vectors"])
        n = sum(not d for d in dup)
        m[f"test_items{NODUP}/{pool}"] = float(n)
        if n == 0:
            continue
        for name, which in families.items():
            per_pool[name][pool] = float(mean_without(scores[which], dup)[0])
            m[f"{name}{NODUP}/{pool}"] = per_pool[name][pool]
        gap, se = paired_gap(split_by_mask(scores["icl"], dup)[1], split_by_mask(scores["vectors"], dup)[1])
        m[f"gap_to_icl{NODUP}/{pool}"] = float(gap)
        ses.append(se)
        if math.isfinite(se):
            m[f"gap_to_icl_se{NODUP}/{pool}"] = float(se)
    if not per_pool["test_acc"]:
        return m
    for name, values in per_pool.items():
        m[f"{name}{NODUP}/mean"] = mean(list(values.values()))
    m[f"gap_to_icl{NODUP}/mean"] = m[f"icl_acc{NODUP}/mean"] - m[f"test_acc{NODUP}/mean"]
    if all(math.isfinite(se) for se in ses):
        m[f"gap_to_icl_se{NODUP}/mean"] = float(sum(se**2 for se in ses) ** 0.5 / len(ses))
    m[f"gain_over_zero_shot{NODUP}/mean"] = m[f"test_acc{NODUP}/mean"] - m[f"zero_shot_acc{NODUP}/mean"]
    return m


def results_markdown(method: str, metrics: Mapping[str, float], latency: Mapping[str, float], shots: int) -> str:
    """Test accuracy (%) per pool: zero-shot, k-shot ICL, the method; the mean; params and latency rows."""
    label = {"live": "LIVE", "mimic": "MimIC"}.get(method, method)
    pools = [k.split("/", 1)[1] for k in metrics if k.startswith("test_acc/") and not k.endswith("/mean")]
    draws = int(metrics.get("icl_draws", 1))
    icl_col = f"{shots}-shot ICL" + (f" (mean of {draws} demo draws)" if draws > 1 else "")
    cols = [("zero-shot", "zero_shot_acc"), (icl_col, "icl_acc"), (label, "test_acc"),
            (f"{label} val (selection)", "val_acc")]
    lines = ["| pool | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    gaps = any(k.startswith("gap_to_icl_se/") for k in metrics)
    if gaps:
        lines[0] += " ICL - " + label + " (± SE) | test items |"
        lines[1] += "---|---|"
    for pool in [*pools, "mean"]:
        cells = [f"{100 * metrics.get(f'{key}/{pool}', float('nan')):.1f}" for _, key in cols]
        if gaps:
            gap = metrics.get(f"gap_to_icl/{pool}", float("nan"))
            se = metrics.get(f"gap_to_icl_se/{pool}", float("nan"))
            n = (sum(metrics.get(f"test_items/{p}", 0) for p in pools) if pool == "mean"
                 else metrics.get(f"test_items/{pool}", float("nan")))
            cells += [f"{100 * gap:+.1f} ± {100 * se:.1f}", f"{n:.0f}"]
        name = "**mean**" if pool == "mean" else pool
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pad = " | |" if gaps else ""
    lines.append(f"| trainable params | 0 | 0 | {int(metrics['trainable_params']):,} | |{pad}")
    lines.append(f"| latency vs zero-shot | 1.00x | {latency.get('icl', float('nan')):.2f}x | "
                 f"{latency.get('vectors', float('nan')):.2f}x | |{pad}")
    notes = target_notes(metrics, pools, shots, label)
    return (f"Test accuracy (%, VQA accuracy) of {label} per task pool; the vector set of each pool was selected on "
            f"the val split, the test split was scored once. ICL - {label}: the gap on the same test items and "
            f"its paired standard error.\n\n" + "\n".join(lines) + "\n" + nodup_markdown(metrics, pools, icl_col, label)
            + "".join(f"\n{n}\n" for n in notes))


def nodup_markdown(metrics: Mapping[str, float], pools: Sequence[str], icl_col: str, label: str) -> str:
    """The accuracy table again without the near-duplicate test items (`nodup_metrics`); "" when the metrics have
    none of its keys (an older run)."""
    if not any(k.startswith(f"test_items{NODUP}/") for k in metrics):
        return ""

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.1f}" if key in metrics else "-"

    cols = [("zero-shot", "zero_shot_acc"), (icl_col, "icl_acc"), (label, "test_acc")]
    lines = ["| pool | " + " | ".join(c for c, _ in cols) + f" | ICL - {label} (± SE) | test items (of all) |",
             "|---" * (len(cols) + 3) + "|"]
    for pool in [*pools, "mean"]:
        cells = [pct(f"{key}{NODUP}/{pool}") for _, key in cols]
        gap, se = f"gap_to_icl{NODUP}/{pool}", f"gap_to_icl_se{NODUP}/{pool}"
        cells.append("-" if gap not in metrics else f"{100 * metrics[gap]:+.1f}"
                     + (f" ± {100 * metrics[se]:.1f}" if se in metrics else ""))
        ps = pools if pool == "mean" else [pool]
        n = sum(metrics.get(f"test_items{NODUP}/{p}", 0) for p in ps)
        cells.append(f"{n:.0f} (of {sum(metrics.get(f'test_items/{p}', 0) for p in ps):.0f})")
        lines.append(f"| {'**mean**' if pool == 'mean' else pool} | " + " | ".join(cells) + " |")
    return ("\nWithout near-duplicates (the test items that near-copy a train item by design, the synthetic "
            "generator's near_duplicate_share, left out; the same answers and scores as above; real data has none):\n\n"
            + "\n".join(lines) + "\n")


def target_notes(metrics: Mapping[str, float], pools: Sequence[str], shots: int, label: str,
                 gain_target: float = 0.30, gap_target: float = 0.05) -> list[str]:
    """Why a per-pool target cannot be read off the table: the teacher's own gain, and the test size.

    A vector set that matches its k-shot teacher gains what the teacher gains over zero-shot; where the teacher
    itself gains less than `gain_target`, reaching it would take beating the teacher. And a pool whose single
    test item moves its accuracy by more than `gap_target` cannot show a gap within that target unless the two
    get exactly the same items right.
    """
    notes = []
    short = [(p, metrics[f"icl_acc/{p}"] - metrics[f"zero_shot_acc/{p}"]) for p in pools
             if f"icl_acc/{p}" in metrics and f"zero_shot_acc/{p}" in metrics
             and metrics[f"icl_acc/{p}"] - metrics[f"zero_shot_acc/{p}"] < gain_target]
    if short:
        listed = ", ".join(f"{p} ({100 * g:+.1f})" for p, g in short)
        notes.append(f"{shots}-shot ICL itself gains less than {100 * gain_target:.0f} points over zero-shot on: "
                     f"{listed}; there {label} reaches the +{100 * gain_target:.0f} target only by beating its "
                     f"teacher.")
    small = [p for p in pools if 0 < metrics.get(f"test_items/{p}", 0) < 1 / gap_target]
    if small:
        notes.append(f"Pools with fewer than {1 / gap_target:.0f} test items ({', '.join(small)}): one item moves "
                     f"accuracy by more than {100 * gap_target:.0f} points, so a gap within that target shows only "
                     f"when {label} and ICL get the same items right; read the standard errors.")
    return notes
