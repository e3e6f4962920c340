"""Stage `vector-baselines` (glue: lmmops.vectors.baselines -> MLflow/DVC): the baselines of LIVE and MimIC.

    lmmops vector-baselines    for each task pool (the 9 ICL task families of the train split, and "vqa": the
                               ordinary, non-ICL train questions; `tasks` narrows them), fit every baseline in
                               `baselines` (LoRA, task vector, function vector, ICV) on the frozen base model,
                               making every choice on that pool's val split, then answer the pool's test split
                               once, zero-shot template, with the baseline applied; reports/vector_baselines/

Metrics (metrics/vector-baselines.json, deterministic): test_acc/<baseline>/<pool> and test_acc/<baseline>/mean
(mean over pools), the same for zero-shot (the plain model, the reference), val_acc/<baseline>/mean (of the
chosen setting), trainable_params/<baseline> (LoRA's adapter scalars; d for the task and function vectors; L*d
for ICV). Timings go to the MLflow run only (the metrics file stays deterministic, as for every stage):
latency_rel/<baseline>, the baseline's test generation time over the plain model's, summed over pools (each
the best of `latency_repeats` identical runs, the methods interleaved in every round; one untimed warm-up run on
val first), and, from run_stage, seconds. The per-pool choices (layer, heads, strength,
epoch and their validation accuracies) and the timings are in reports/vector_baselines/results.json.

Run: `lmmops vector-baselines` (dvc.yaml stage `vector-baselines`); `python -m pytest
tests/vectors/test_baselines.py -q`.
"""

from __future__ import annotations

import logging
from typing import Any

from lmmops.config import VectorBaselinesConfig, to_dict
from lmmops.stages import StageContext, write_json_atomic

log = logging.getLogger(__name__)

VQA_POOL = "vqa"  # the ordinary (non-ICL) VQA questions as one pool


def task_pools(items: list[Any], names: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """{pool name: items}: ICL tasks (lmmops.data.icl_tasks order) then "vqa"; `names` picks (and orders) them."""
    from lmmops.data.icl_tasks import group_by_task

    pools = group_by_task(items)
    pools[VQA_POOL] = [it for it in items if not it.is_icl]
    if not names:
        return {name: pool for name, pool in pools.items() if pool}
    unknown = [n for n in names if n not in pools]
    if unknown:
        raise ValueError(f"vector-baselines.tasks: unknown pool {unknown[0]!r}; pools: {', '.join(pools)}")
    return {name: pools[name] for name in names}


def results_markdown(table: dict[str, dict[str, float]], columns: list[str], params: dict[str, int],
                     latency: dict[str, float]) -> str:
    """Test accuracy per pool (rows) and method (columns), the mean, trainable parameters and latency."""
    head = "| pool | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = [f"| {pool} | " + " | ".join(f"{100 * accs[c]:.1f}" for c in columns) + " |" for pool, accs in table.items()]
    mean = {c: sum(accs[c] for accs in table.values()) / len(table) for c in columns}
    rows.append("| **mean** | " + " | ".join(f"**{100 * mean[c]:.1f}**" for c in columns) + " |")
    rows.append("| trainable params | " + " | ".join(f"{params.get(c, 0):,}" for c in columns) + " |")
    rows.append("| latency vs zero-shot | " + " | ".join(f"{latency.get(c, 1.0):.2f}x" for c in columns) + " |")
    return ("Test accuracy (%, VQA accuracy) of each baseline per task pool; every choice made on the val split.\n\n"
            + head + "\n".join(rows) + "\n")


def vector_baselines(cfg: VectorBaselinesConfig, ctx: StageContext) -> dict[str, float]:
    import torch

    from lmmops.data.loaders import load_vqa
    from lmmops.models import load_model
    from lmmops.stages.icl import data_version
    from lmmops.vectors import baselines as bl

    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)
    train = task_pools(load_vqa(data_dir, cfg.train_split), cfg.tasks)
    val = task_pools(load_vqa(data_dir, cfg.val_split), tuple(train))
    test = task_pools(load_vqa(data_dir, cfg.test_split), tuple(train))
    empty = [f"{name} ({split})" for name in train for split, pools in (("val", val), ("test", test))
             if not pools[name]]
    if empty:
        raise ValueError(f"vector-baselines: pools without items: {', '.join(empty)}; narrow `tasks`")
    model, processor = load_model(ctx.model_spec(cfg.model))
    gen = {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens}

    def plain(items: list[Any]) -> dict[str, float]:
        return bl.timed_evaluation(model, processor, items, instruction=cfg.instruction, **gen)

    plain(next(iter(val.values())))  # warm-up (first-call overheads), untimed, never the test split
    columns = ["zero-shot", *cfg.baselines]
    table: dict[str, dict[str, float]] = {}
    seconds = dict.fromkeys(columns, 0.0)
    params: dict[str, int] = {"zero-shot": 0}
    choices: dict[str, dict[str, Any]] = {}
    val_accs: dict[str, list[float]] = {b: [] for b in cfg.baselines}
    for n, (pool, items) in enumerate(train.items(), 1):
        log.info("vector-baselines: pool %d/%d %s (%d train, %d val, %d test)", n, len(train), pool, len(items),
                 len(val[pool]), len(test[pool]))
        fitted = {name: bl.fit_baseline(name, cfg, model, processor, items, val[pool]) for name in cfg.baselines}
        # The test split, once per method: accuracy (and a first timing) ...
        results = {"zero-shot": plain(test[pool])}
        for name, f in fitted.items():
            results[name] = bl.evaluate_baseline(f, model, processor, test[pool], **gen)
        times = {c: [results[c]["seconds"]] for c in columns}
        # ... then `latency_repeats - 1` more rounds of the same (greedy, identical) generations, the methods
        # interleaved in each round so that a slow spell of a shared machine does not land on one method only.
        for _ in range(cfg.latency_repeats - 1):
            times["zero-shot"].append(plain(test[pool])["seconds"])
            for name, f in fitted.items():
                with f.applied(model, processor):
                    times[name].append(bl.timed_evaluation(model, processor, test[pool], instruction=f.instruction,
                                                           **gen)["seconds"])
        for c in columns:
            seconds[c] += min(times[c])
        table[pool] = {c: results[c]["accuracy"] for c in columns}
        for name, f in fitted.items():
            params[name] = f.trainable_params
            val_accs[name].append(float(f.choice["val_accuracy"]))
            choices.setdefault(pool, {})[name] = {k: v for k, v in f.choice.items() if k != "head_aie"}
            log.info("vector-baselines: %s %s test %.3f (%s)", pool, name, table[pool][name],
                     {k: v for k, v in f.choice.items() if k in ("layer", "strength", "epoch")})
        ctx.run.log_metrics({"pools_done": float(n)}, step=n)

    latency = {c: seconds[c] / seconds["zero-shot"] for c in columns}
    metrics: dict[str, float] = {}
    for c in columns:
        for pool, accs in table.items():
            metrics[f"test_acc/{c}/{pool}"] = accs[c]
        metrics[f"test_acc/{c}/mean"] = sum(accs[c] for accs in table.values()) / len(table)
    for name in cfg.baselines:
        metrics[f"val_acc/{name}/mean"] = sum(val_accs[name]) / len(val_accs[name])
        metrics[f"trainable_params/{name}"] = float(params[name])

    out_dir = ctx.path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = results_markdown(table, columns, params, latency)
    log.info("vector-baselines results:\n%s", report)
    (out_dir / "results.md").write_text(report)
    results = {"data_version": data_version(ctx, data_dir), "config": to_dict(cfg),
               "pools": {p: {"train": len(train[p]), "val": len(val[p]), "test": len(test[p])} for p in train},
               "test_accuracy": table, "trainable_params": params, "latency_rel": latency,
               "test_seconds": seconds, "choices": choices}
    write_json_atomic(out_dir / "results.json", results)
    ctx.run.log_metrics({f"latency_rel/{name}": latency[name] for name in cfg.baselines})
    ctx.run.log_text(report, "vector_baselines/results.md")
    ctx.run.log_dict(results, "vector_baselines/results.json")
    return metrics
