"""Stage `vector-baselines` (glue: lmmops.vectors.baselines -> MLflow/DVC): the baselines of LIVE and MimIC.

    lmmops vector-baselines    for each task pool (the 9 ICL task families of the train split, and "vqa": the
                               ordinary, non-ICL train questions; `tasks` narrows them), fit every baseline in
                               `baselines` (LoRA, task vector, function vector, ICV) on the frozen base model,
                               making every choice on that pool's val split, then answer the pool's test split
                               once, zero-shot template, with the baseline applied; reports/vector_baselines/

Metrics (metrics/vector-baselines.json, deterministic): test_acc/<baseline>/<pool> and test_acc/<baseline>/mean
(mean over pools), the same for zero-shot (the plain model, the reference); test_acc_nodup/<baseline>/<pool> and
/mean, test_items_nodup/<pool>: the same scores without the near-duplicate test items (near-copies of train items,
synthetic data only; a second table in results.md); val_acc/<baseline>/mean (of the
chosen setting), trainable_params/<baseline> (LoRA's adapter scalars; d for the task and function vectors; L*d
for ICV). Timings go to the MLflow run only (the metrics file stays deterministic, as for every stage):
latency_rel/<baseline>, the baseline's test generation time over the plain model's, summed over pools (each
the best of `latency_repeats` identical runs, the methods interleaved in every round; one untimed warm-up run on
val first), and, from run_stage, seconds. The per-pool choices (layer, heads, strength,
epoch and their validation accuracies) and the timings are in reports/vector_baselines/results.json.

`workers` (params.yaml: 2) fits the pools in that many spawned processes on CPU, each loading the base model
once and doing one pool's whole job (fit, test, timings): the same metrics as one process (`threads: 1`, every
baseline seeded per pool), ~15% less wall time on 2 cores (each worker first spends ~10 s importing the stack and
loading the model). On an accelerator it is ignored.

Run: `lmmops vector-baselines` (dvc.yaml stage `vector-baselines`); `python -m pytest
tests/vectors/test_baselines.py -q`.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from tqdm import tqdm

from lmmops import tracking
from lmmops.config import VectorBaselinesConfig, to_dict
from lmmops.data.loaders import load_vqa
from lmmops.eval.analysis import mean_without
from lmmops.icl.inference import decoding
from lmmops.models import load_model
from lmmops.stages import StageContext, write_json_atomic
from lmmops.stages.icl import data_version
from lmmops.vectors import baselines as bl
from lmmops.vectors.pools import task_pools
from lmmops.vectors.reporting import baselines_markdown, pool_means
from lmmops.vectors.workers import map_in_workers, worker_model

log = logging.getLogger(__name__)


def _decoded(fn: Any) -> Any:
    """`fn(cfg, ...)` under `cfg`'s decoding (num_beams, answer_cut): the runners that the baselines' fitting and
    scoring build inside (lmmops.vectors.train.evaluate_vectors) read it, in this process or a worker, so zero-shot
    and every baseline are scored alike."""

    @functools.wraps(fn)
    def run(cfg: VectorBaselinesConfig, *args: Any, **kwargs: Any) -> Any:
        with decoding(cfg.num_beams, cfg.answer_cut):
            return fn(cfg, *args, **kwargs)

    return run


@_decoded
def fit_and_test_pool(cfg: VectorBaselinesConfig, model: Any, processor: Any, pool: str, train: list[Any],
                      val: list[Any], test: list[Any]) -> dict[str, Any]:
    """One pool: fit every baseline (choices on `val`), score `test` once per method (zero-shot included), then
    time `latency_repeats - 1` more identical test generations. A picklable summary: accuracy, seconds (the best
    run) per method; trainable params, val accuracy and choice per baseline."""

    gen = {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens}

    def plain(items: list[Any], samples_out: list[dict[str, Any]] | None = None) -> dict[str, float]:
        return bl.timed_evaluation(model, processor, items, instruction=cfg.instruction, samples_out=samples_out,
                                   **gen)

    columns = ["zero-shot", *cfg.baselines]
    fitted = {name: bl.fit_baseline(name, cfg, model, processor, train, val) for name in cfg.baselines}
    # The test split, once per method: accuracy (and a first timing) ...
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in columns}  # per test item: its score
    results = {"zero-shot": plain(test, samples["zero-shot"])}
    for name, f in fitted.items():
        results[name] = bl.evaluate_baseline(f, model, processor, test, samples_out=samples[name], **gen)
    times = {c: [results[c]["seconds"]] for c in columns}
    # ... then `latency_repeats - 1` more rounds of the same (greedy, identical) generations, the methods
    # interleaved in each round so that a slow spell of a shared machine does not land on one method only.
    for _ in range(cfg.latency_repeats - 1):
        times["zero-shot"].append(plain(test)["seconds"])
        for name, f in fitted.items():
            with f.applied(model, processor):
                times[name].append(bl.timed_evaluation(model, processor, test, instruction=f.instruction,
                                                       **gen)["seconds"])
    # The same scores without the near-duplicate test items (near-copies of train items; synthetic data only).
    dup = [it.near_duplicate_of is not None for it in test]
    nodup = {c: mean_without([float(s["accuracy"]) for s in samples[c]], dup)[0] for c in columns}
    return {"pool": pool,
            "accuracy": {c: results[c]["accuracy"] for c in columns},
            "accuracy_nodup": {c: a for c, a in nodup.items() if math.isfinite(a)},  # none: every item a duplicate
            "test_items_nodup": sum(not d for d in dup),
            "seconds": {c: min(times[c]) for c in columns},
            "params": {name: f.trainable_params for name, f in fitted.items()},
            "val_accuracy": {name: float(f.choice["val_accuracy"]) for name, f in fitted.items()},
            "choices": {name: {k: v for k, v in f.choice.items() if k != "head_aie"} for name, f in fitted.items()}}


@_decoded
def _warm_up(cfg: VectorBaselinesConfig, model: Any, processor: Any, val: list[Any]) -> None:
    """One untimed zero-shot run (first-call overheads) before any timing; on val, never the test split."""

    bl.timed_evaluation(model, processor, val, instruction=cfg.instruction, batch_size=cfg.batch_size,
                        max_new_tokens=cfg.max_new_tokens)


_WARM: list[bool] = []  # per worker process: warmed up yet


def _pool_in_worker(cfg: VectorBaselinesConfig, pool: str, train: list[Any], val: list[Any],
                    test: list[Any]) -> dict[str, Any]:
    model, processor = worker_model()
    if not _WARM:
        _warm_up(cfg, model, processor, val)
        _WARM.append(True)
    return fit_and_test_pool(cfg, model, processor, pool, train, val, test)


def pool_results(cfg: VectorBaselinesConfig, model_spec: str, train: dict[str, list[Any]],
                 val: dict[str, list[Any]], test: dict[str, list[Any]], *, workers: int = 1,
                 on_pool: Any = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """`fit_and_test_pool` for every pool, in `train`'s order; `on_pool(n_done, result)` after each (and a
    progress bar over the pools).

    `workers` > 1 runs the pools in that many spawned processes (CPU; `cfg.threads` each), each loading the base
    model once: every baseline is seeded per pool and the float work is single-threaded, so the accuracies and
    choices equal one process's (tests/vectors/test_baselines.py checks it). The latency ratios stay fair: each
    pool's methods are timed in the same process, interleaved."""

    names = list(train)
    done: dict[str, dict[str, Any]] = {}
    processes = 1 if workers <= 1 or len(names) <= 1 else min(workers, len(names))
    bar = tqdm(total=len(names), desc=f"vector-baselines pools ({processes} process{'es' * (processes > 1)})",
               disable=not progress, dynamic_ncols=True)

    def finish(result: dict[str, Any]) -> None:
        done[result["pool"]] = result
        if on_pool is not None:
            on_pool(len(done), result)
        bar.update(1)

    if processes == 1:
        model, processor = load_model(model_spec)
        _warm_up(cfg, model, processor, next(iter(val.values())))
        for pool in names:
            log.info("vector-baselines: pool %d/%d %s (%d train, %d val, %d test)", len(done) + 1, len(names), pool,
                     len(train[pool]), len(val[pool]), len(test[pool]))
            finish(fit_and_test_pool(cfg, model, processor, pool, train[pool], val[pool], test[pool]))
        bar.close()
        return done

    # Largest pools first (the "vqa" pool is ~5x an ICL task's), so that no long job is left for the end.
    by_size = sorted(names, key=lambda p: -(len(train[p]) + len(val[p]) + len(test[p])))
    try:
        map_in_workers(_pool_in_worker, [(cfg, pool, train[pool], val[pool], test[pool]) for pool in by_size],
                       model_spec=model_spec, threads=cfg.threads, workers=processes, on_result=finish)
    finally:
        bar.close()
    return {pool: done[pool] for pool in names}


def vector_baselines(cfg: VectorBaselinesConfig, ctx: StageContext) -> dict[str, float]:
    if cfg.workers < 1:
        raise ValueError(f"vector-baselines.workers must be >= 1, got {cfg.workers}")
    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)
    where = "vector-baselines.tasks"
    train = task_pools(load_vqa(data_dir, cfg.train_split), cfg.tasks, where=where)
    val = task_pools(load_vqa(data_dir, cfg.val_split), tuple(train), where=where)
    test = task_pools(load_vqa(data_dir, cfg.test_split), tuple(train), where=where)
    empty = [f"{name} ({split})" for name in train for split, pools in (("val", val), ("test", test))
             if not pools[name]]
    if empty:
        raise ValueError(f"vector-baselines: pools without items: {', '.join(empty)}; narrow `tasks`")
    columns = ["zero-shot", *cfg.baselines]

    def on_pool(n: int, result: dict[str, Any]) -> None:
        for name in cfg.baselines:
            log.info("vector-baselines: %s %s test %.3f (%s)", result["pool"], name, result["accuracy"][name],
                     {k: v for k, v in result["choices"][name].items() if k in ("layer", "strength", "epoch")})
        ctx.run.log_metrics({"pools_done": float(n)}, step=n)

    # Worker processes on CPU only: on an accelerator one process per device.
    workers = cfg.workers if not torch.cuda.is_available() else 1
    if workers != cfg.workers:
        log.info("vector-baselines: workers %d ignored on an accelerator (one process per device)", cfg.workers)
    per_pool = pool_results(cfg, tracking.resolve_model_spec(ctx.model_spec(cfg.model)), train, val, test,
                            workers=workers, on_pool=on_pool)
    table = {pool: r["accuracy"] for pool, r in per_pool.items()}
    seconds = {c: sum(r["seconds"][c] for r in per_pool.values()) for c in columns}
    params: dict[str, int] = {"zero-shot": 0, **next(iter(per_pool.values()))["params"]}
    val_accs = {name: [r["val_accuracy"][name] for r in per_pool.values()] for name in cfg.baselines}
    choices = {pool: r["choices"] for pool, r in per_pool.items()}

    latency = {c: seconds[c] / seconds["zero-shot"] for c in columns}
    metrics: dict[str, float] = {}
    means = pool_means(table, columns)
    for c in columns:
        for pool, accs in table.items():
            metrics[f"test_acc/{c}/{pool}"] = accs[c]
        metrics[f"test_acc/{c}/mean"] = means[c]
    # The same test accuracies without the near-duplicate test items (same per-item scores, filtered).
    nodup = {pool: r["accuracy_nodup"] for pool, r in per_pool.items()}
    items = {pool: (int(r["test_items_nodup"]), len(test[pool])) for pool, r in per_pool.items()}
    for pool, accs in nodup.items():
        for c, acc in accs.items():
            metrics[f"test_acc_nodup/{c}/{pool}"] = float(acc)
        metrics[f"test_items_nodup/{pool}"] = float(items[pool][0])
    for c, acc in pool_means(nodup, columns).items():
        metrics[f"test_acc_nodup/{c}/mean"] = acc
    for name in cfg.baselines:
        metrics[f"val_acc/{name}/mean"] = sum(val_accs[name]) / len(val_accs[name])
        metrics[f"trainable_params/{name}"] = float(params[name])

    out_dir = ctx.path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = baselines_markdown(table, columns, params, latency, nodup, items)
    log.info("vector-baselines results:\n%s", report)
    (out_dir / "results.md").write_text(report)
    results = {"data_version": data_version(ctx, data_dir), "config": to_dict(cfg),
               "pools": {p: {"train": len(train[p]), "val": len(val[p]), "test": len(test[p])} for p in train},
               "test_accuracy": table, "test_accuracy_nodup": nodup, "trainable_params": params,
               "latency_rel": latency,
               "test_seconds": seconds, "choices": choices}
    write_json_atomic(out_dir / "results.json", results)
    ctx.run.log_metrics({f"latency_rel/{name}": latency[name] for name in cfg.baselines})
    ctx.run.log_text(report, "vector_baselines/results.md")
    ctx.run.log_dict(results, "vector_baselines/results.json")
    return metrics
