"""Stage implementations of the in-context vectors (docs/methods.md §5-6): `icl-reference`, `live` and `mimic` (glue:
lmmops.vectors -> MLflow/DVC).

    lmmops icl-reference
                    the test-split `shots`-shot ICL reference of every task pool (random demos from the
                    pool's train items, `icl_draws` draws per query averaged): reports/icl_reference/
                    (`lmmops.vectors.icl_reference`), which live and mimic read, so that their icl_acc/* are the
                    same numbers by construction; metrics icl_acc/<pool> and /mean, test_items/<pool>
    lmmops live     LIVE vectors, one set per task pool (`live.tasks`; default the 9 ICL task families of the
    lmmops mimic    MimIC shifts  train split and "vqa", its ordinary questions), distilled from a `shots`-shot
                    teacher with demos from the same pool; selected on the val split, tested once; bundled in
                    models/<method>/ and registered as a new version of lmmops-<method> (an MLflow pyfunc)

Per pool (`lmmops.vectors.pool_training`; `workers` pools at once on CPU): `distill` in `selection_rounds` segments
of one schedule (resumable checkpoints under checkpoints/<method>/, every logged step to MLflow as
train/<pool>/<metric>), val accuracy after each segment (selection/val_acc/<pool>), the best kept; then, after
every pool is trained, the test split once (`lmmops.vectors.evaluation`): the selected vectors and zero-shot, and
the timing of their generations at the same batch size, beside the ICL reference read from `icl_reference` (the
icl-reference stage's output; a reference scored with another model, other pools or test items, shots or decoding
is an error that says to run `dvc repro icl-reference`).

Metrics (metrics/<method>.json, deterministic): test_acc/<pool>, zero_shot_acc/<pool>, icl_acc/<pool>,
val_acc/<pool> and their /mean over pools, selected_step/<pool>, gap_to_icl/mean (ICL minus vectors),
gain_over_zero_shot/mean, trainable_params (one pool's set), pools, shots, icl_draws. Timings go to the MLflow run
only (the metrics file stays deterministic, as for every stage): latency_rel and icl_latency_rel (generation time over
zero-shot's, summed over pools, best of `latency_repeats`), train_seconds, and from run_stage, seconds.

Registration: the bundle (`lmmops.vectors.bundle`) is logged as a pyfunc (`lmmops.tracking.pyfunc`) and
registered as a new version of `registered_name` with tags method, teacher_strategy ("RS-within-task"), shots,
base_model, base_model_version, val_acc_mean, pools, data_version; the base model is referenced by its
registered `lmmops-base` version when its weights match one, else logged with the vectors. The version gets the
alias `challenger`; `champion` moves to it only when its mean val accuracy beats the champion's (read back from
the champion's val_acc_mean tag) by `promote_margin`.

Run: `lmmops icl-reference`, `lmmops live`, `lmmops mimic` (dvc.yaml stages of the same names); `python -m pytest
tests/vectors/test_stages.py -q`. Departures from the papers: see `lmmops.vectors.pool_training` and
`lmmops.vectors.evaluation`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lmmops import tracking
from lmmops.config import IclReferenceConfig, LiveStageConfig, MimicStageConfig, VectorStageConfig, to_dict
from lmmops.data.loaders import load_vqa
from lmmops.models import load_model
from lmmops.stages import StageContext, launcher_rank, write_json_atomic
from lmmops.stages.icl import data_version
from lmmops.tracking.pyfunc import log_vector_model
from lmmops.vectors.bundle import BaseModelRef, fingerprint_version, read_manifest, save_bundle
from lmmops.vectors.distributed import launch_device
from lmmops.vectors.evaluation import evaluate_test, score_icl_reference
from lmmops.vectors.icl_reference import decoding_params, read_icl_reference, write_icl_reference
from lmmops.vectors.pool_training import train_pools
from lmmops.vectors.pools import SPLITS, TEACHER_STRATEGY, select_pools
from lmmops.vectors.reporting import mean, stage_metrics, vector_stage_markdown
from lmmops.vectors.train import DistillConfig, model_fingerprint

log = logging.getLogger(__name__)


def icl_reference(cfg: IclReferenceConfig, ctx: StageContext) -> dict[str, float]:
    """Score and write the test-split k-shot ICL reference of every pool (`lmmops.vectors.icl_reference`)."""

    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)
    splits = {split: load_vqa(data_dir, split) for split in SPLITS}
    pools = select_pools(splits, cfg.tasks, shots=cfg.shots, where="icl-reference.tasks")
    if cfg.icl_draws < 1:
        raise ValueError(f"icl-reference.icl_draws must be >= 1, got {cfg.icl_draws}")
    version = data_version(ctx, data_dir)
    spec = ctx.model_spec(cfg.model)
    model, processor = load_model(tracking.resolve_model_spec(spec), device=launch_device())
    ctx.run.set_tags({"lmmops.data_version": version})
    scores = score_icl_reference(model, processor, pools, shots=cfg.shots, seed=cfg.seed, draws=cfg.icl_draws,
                                 batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                 instruction=cfg.instruction, num_beams=cfg.num_beams, answer_cut=cfg.answer_cut)
    param = next(model.parameters())
    out = write_icl_reference(
        ctx.path(cfg.out_dir), scores, pools, model_fingerprint=model_fingerprint(model, processor), shots=cfg.shots,
        draws=cfg.icl_draws, seed=cfg.seed,
        decoding=decoding_params(eval_batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                 num_beams=cfg.num_beams, answer_cut=cfg.answer_cut, instruction=cfg.instruction),
        extra={"model": cfg.model, "data_version": version, "device": str(param.device), "dtype": str(param.dtype),
               "threads": cfg.threads})
    # Timings go to the MLflow run only (the metrics file stays deterministic).
    ctx.run.log_metrics({f"icl_seconds/{pool}": s.seconds for pool, s in scores.items()})
    metrics: dict[str, float] = {f"icl_acc/{pool}": mean(s.item_acc) for pool, s in scores.items()}
    metrics["icl_acc/mean"] = mean(list(metrics.values()))
    metrics.update({f"test_items/{pool}": float(len(s.item_acc)) for pool, s in scores.items()})
    metrics.update({"pools": float(len(scores)), "shots": float(cfg.shots), "icl_draws": float(cfg.icl_draws)})
    log.info("icl-reference: %d-shot ICL on %s test items (%d draws) -> %s; mean accuracy %.3f", cfg.shots,
             {p: len(s.item_acc) for p, s in scores.items()}, cfg.icl_draws, out, metrics["icl_acc/mean"])
    return metrics


def live(cfg: LiveStageConfig, ctx: StageContext) -> dict[str, float]:
    return run_vector_stage(cfg, ctx)


def mimic(cfg: MimicStageConfig, ctx: StageContext) -> dict[str, float]:
    return run_vector_stage(cfg, ctx)


def distill_config(cfg: VectorStageConfig, ctx: StageContext) -> DistillConfig:
    """The per-pool DistillConfig of a stage config: its `train` settings as they are, and the stage keys that
    training shares with evaluation (validated here, before any model is loaded)."""
    if cfg.selection_rounds < 1:
        raise ValueError(f"{cfg.method}.selection_rounds must be >= 1, got {cfg.selection_rounds}")
    if cfg.workers < 1:
        raise ValueError(f"{cfg.method}.workers must be >= 1, got {cfg.workers}")
    return DistillConfig(train=cfg.train, shots=cfg.shots, seed=cfg.seed, instruction=cfg.instruction,
                         threads=cfg.threads, deepspeed=None if cfg.deepspeed is None else str(ctx.path(cfg.deepspeed)))


def base_reference(cfg: VectorStageConfig, ctx: StageContext, spec: str, model: Any,
                   processor: Any) -> tuple[Any, Path | None]:
    """(BaseModelRef, directory to log with the vectors or None): the registered version when one matches."""

    if spec.startswith("models:/"):
        name, _, ref = spec.removeprefix("models:/").partition("/")
        name, _, alias = name.partition("@")
        version = tracking.alias_version(name, alias) if alias else ref
        if version:
            return BaseModelRef(name, str(version), True, spec), None
    local = Path(spec)
    if local.is_dir():
        version = tracking.matching_model_version(cfg.base_registered_name, local)
        if version:
            return BaseModelRef(cfg.base_registered_name, version, True, cfg.model), None
    ref = BaseModelRef(cfg.model, fingerprint_version(model, processor), False, cfg.model)
    return ref, local if local.is_dir() else None


def run_vector_stage(cfg: VectorStageConfig, ctx: StageContext) -> dict[str, float]:
    method = cfg.method
    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)

    # 1. Everything that can be wrong in the config or the data fails here, before the model is loaded.
    splits = {split: load_vqa(data_dir, split) for split in SPLITS}
    pools = select_pools(splits, cfg.tasks, shots=cfg.shots, where=f"{method}.tasks")
    reference = read_icl_reference(ctx.path(cfg.icl_reference))
    reference.check(pools, shots=cfg.shots, stage=method,
                    decoding=decoding_params(eval_batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                             num_beams=cfg.num_beams, answer_cut=cfg.answer_cut,
                                             instruction=cfg.instruction))
    dcfg = distill_config(cfg, ctx)
    version = data_version(ctx, data_dir)
    spec = ctx.model_spec(cfg.model)  # as configured (a models:/ URI names the base model's registered version)
    local_spec = tracking.resolve_model_spec(spec)  # what load_model and the worker processes load
    # cuda:LOCAL_RANK on a GPU host (one process per GPU under torchrun / the deepspeed launcher), else cpu.
    model, processor = load_model(local_spec, device=launch_device())
    eval_kw = {"batch_size": cfg.eval_batch_size, "max_new_tokens": cfg.max_new_tokens,
               "instruction": cfg.instruction, "num_beams": cfg.num_beams, "answer_cut": cfg.answer_cut}
    rank = launcher_rank()
    if rank != 0:  # a launcher's other ranks: train (the collective part), then leave the rest to rank 0
        log.info("%s: rank %d: pools %s", method, rank, list(pools))
        train_pools(dcfg, model, processor, pools, rounds=cfg.selection_rounds,
                    checkpoint_dir=ctx.path(cfg.checkpoint_dir), eval_kw=eval_kw, progress=False)
        return {}
    reference.check_model(model_fingerprint(model, processor), stage=method)
    base, base_dir = base_reference(cfg, ctx, spec, model, processor)
    log.info("%s: pools %s; base model %s version %s", method, {p: len(v["train"]) for p, v in pools.items()},
             base.name, base.version)
    ctx.run.set_tags({"lmmops.data_version": version, "lmmops.base_model": base.name,
                      "lmmops.base_model_version": base.version, "lmmops.teacher_strategy": TEACHER_STRATEGY,
                      "lmmops.teacher_shots": cfg.shots})

    # 2. Train each pool; choose among the segment ends on the val split only. On CPU without DeepSpeed the pools
    #    may train in `workers` processes (same vectors as one process; see pool_training.train_pools).
    workers = cfg.workers if dcfg.deepspeed is None and next(model.parameters()).device.type == "cpu" else 1
    if workers != cfg.workers:
        log.info("%s: workers %d ignored (DeepSpeed or an accelerator: one process per device)", method, cfg.workers)
    finished: list[str] = []

    def on_log(pool: str, step: int, values: dict[str, float]) -> None:
        ctx.run.log_metrics({f"train/{pool}/{k}": v for k, v in values.items()}, step=step)

    def on_pool(result: Any) -> None:
        for r in result.rounds:
            ctx.run.log_metrics({f"selection/val_acc/{result.pool}": r["val_acc"]}, step=int(r["step"]))
        finished.append(result.pool)
        log.info("%s %d/%d %s: val acc per segment end %s -> step %d (%.3f); %.1f s training", method, len(finished),
                 len(pools), result.pool, [(int(r["step"]), round(r["val_acc"], 3)) for r in result.rounds],
                 result.step, result.val_acc, result.train_seconds)

    training = train_pools(dcfg, model, processor, pools, rounds=cfg.selection_rounds,
                           checkpoint_dir=ctx.path(cfg.checkpoint_dir), eval_kw=eval_kw, workers=workers,
                           model_spec=local_spec, on_log=on_log, on_pool=on_pool, progress=True)

    # 3. The test split, once, with the selected vectors and zero-shot beside the ICL reference; timings.
    test = evaluate_test(model, processor, {p: t.vectors for p, t in training.items()}, pools,
                         {p: reference.scores[p] for p in pools}, repeats=cfg.latency_repeats, **eval_kw)
    trainable = next(iter(training.values())).vectors.num_parameters()
    metrics = stage_metrics(training, test, trainable_params=trainable, shots=cfg.shots, icl_draws=reference.draws)
    latency = {"vectors": test.latency_rel("vectors"), "icl": test.latency_rel("icl")}
    ctx.run.log_metrics({"latency_rel": latency["vectors"], "icl_latency_rel": latency["icl"],
                         "train_seconds": sum(t.train_seconds for t in training.values())})

    # 4. The bundle (a DVC output), logged as a pyfunc and registered; champion by the val margin.
    out = save_bundle(ctx.path(cfg.out_dir), {p: t.vectors for p, t in training.items()}, model, method=method,
                      base=base, shots=cfg.shots, val_acc={p: t.val_acc for p, t in training.items()},
                      steps={p: t.step for p, t in training.items()},
                      train_items={p: len(v["train"]) for p, v in pools.items()}, instruction=cfg.instruction,
                      max_new_tokens=cfg.max_new_tokens, teacher_strategy=TEACHER_STRATEGY,
                      extra={"data_version": version})
    val_mean = float(read_manifest(out)["val_acc_mean"])
    tags = {"method": method, "teacher_strategy": TEACHER_STRATEGY, "shots": cfg.shots,
            "base_model": base.name, "base_model_version": base.version, "val_acc_mean": repr(val_mean),
            "pools": ",".join(training), "data_version": version, "stage_run": ctx.run.run_id}
    with tempfile.TemporaryDirectory(prefix="lmmops-base-") as tmp:
        logged_base = base_dir
        if not base.registered and logged_base is None:  # e.g. a `tiny:` model: save it to log it
            logged_base = Path(tmp) / "base"
            model.save_pretrained(logged_base)
            processor.save_pretrained(logged_base)
        uri, model_version = log_vector_model(ctx.run, out, cfg.registered_name,
                                                       base_model_dir=None if base.registered else logged_base,
                                                       tags=tags)
    champion = tracking.alias_version(cfg.registered_name, "champion")
    moved = tracking.promote_by_tag(cfg.registered_name, model_version, tag="val_acc_mean", margin=cfg.promote_margin)
    ctx.run.set_tags({"lmmops.model_version": f"{cfg.registered_name}/{model_version}",
                      "lmmops.champion_moved": str(moved).lower()})
    log.info("%s: registered %s version %s (%s); champion %s", method, cfg.registered_name, model_version, uri,
             f"moved to {model_version}" if moved else f"stays at {champion} (margin {cfg.promote_margin})")

    # 5. Reports (a DVC output) and the MLflow copies.
    report_dir = ctx.path(cfg.report_dir)
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    table = vector_stage_markdown(method, metrics, latency, cfg.shots)
    table += (f"\nRegistered: {cfg.registered_name} version {model_version} (challenger"
              f"{', champion' if moved else ''}); base model {base.name} version {base.version}.\n")
    (report_dir / "results.md").write_text(table)
    results = {
        "method": method, "data_version": version, "base_model": base.as_dict(), "shots": cfg.shots,
        "teacher_strategy": TEACHER_STRATEGY, "metrics": metrics, "latency_rel": latency["vectors"],
        "icl_latency_rel": latency["icl"],
        "registered": {"name": cfg.registered_name, "version": model_version, "champion": moved, "uri": uri},
        "pools": {p: {"train_items": len(pools[p]["train"]), "val_items": len(pools[p]["val"]),
                      "test_items": len(pools[p]["test"]), "segments": t.rounds, "selected_step": t.step,
                      "total_steps": t.total_steps, "train_seconds": t.train_seconds,
                      "generation_seconds": test.seconds[p], "test_samples": test.samples[p]}
                  for p, t in training.items()},
        "config": to_dict(cfg),
    }
    write_json_atomic(report_dir / "results.json", results)
    ctx.run.log_text(table, f"{method}/results.md")
    ctx.run.log_dict(results, f"{method}/results.json")
    log.info("%s results:\n%s", method, table)
    return metrics
