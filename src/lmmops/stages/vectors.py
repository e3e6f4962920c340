"""Stage implementations of the in-context vectors (PAPERS.md §3-4): `live` and `mimic` (glue: lmmops.vectors ->
MLflow/DVC).

    lmmops live     LIVE vectors, one set per task pool (`live.tasks`; default the 9 ICL task families of the
    lmmops mimic    MimIC shifts  train split and "vqa", its ordinary questions), distilled from a `shots`-shot
                    teacher with demos from the same pool; selected on the val split, tested once; bundled in
                    models/<method>/ and registered as a new version of lmmops-<method> (an MLflow pyfunc)

Per pool (`lmmops.vectors.stage_lib`; `workers` pools at once on CPU): `distill` in `selection_rounds` segments of
one schedule (resumable checkpoints under checkpoints/<method>/, every logged step to MLflow as
train/<pool>/<metric>), val accuracy after each segment (selection/val_acc/<pool>), the best kept; then, after
every pool is trained, the test split once: the selected vectors, zero-shot and `shots`-shot ICL (random demos
from the pool's train items, `icl_draws` draws per query averaged), and the timing of the three generations at
the same batch size. The ICL reference is kept per pool under `icl_reference_dir` (checkpoints/icl_reference/,
keyed by model, items, draws and code): whichever of live and mimic runs second reads it instead of scoring it
again, so the two stages' icl_acc/* are the same numbers by construction.

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

Run: `lmmops live`, `lmmops mimic` (dvc.yaml stages `live`, `mimic`); `python -m pytest tests/vectors/test_stages.py
-q`. Departures from the papers: see `lmmops.vectors.stage_lib`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lmmops import tracking
from lmmops.config import LiveStageConfig, MimicStageConfig, VectorStageConfig, to_dict
from lmmops.stages import StageContext, launcher_rank, write_json_atomic
from lmmops.stages.icl import data_version

log = logging.getLogger(__name__)


def live(cfg: LiveStageConfig, ctx: StageContext) -> dict[str, float]:
    return run_vector_stage(cfg, ctx)


def mimic(cfg: MimicStageConfig, ctx: StageContext) -> dict[str, float]:
    return run_vector_stage(cfg, ctx)


def distill_config(cfg: VectorStageConfig, ctx: StageContext) -> Any:
    """The per-pool DistillConfig of a stage config (validated here, before any model is loaded)."""
    from lmmops.vectors.train import DistillConfig

    kw: dict[str, Any] = {
        "method": cfg.method, "shots": cfg.shots, "steps": cfg.steps, "batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "warmup_share": cfg.warmup_share, "max_grad_norm": cfg.max_grad_norm, "lm_weight": cfg.lm_weight,
        "seed": cfg.seed, "instruction": cfg.instruction, "checkpoint_every": cfg.checkpoint_every,
        "log_every": cfg.log_every, "threads": cfg.threads,
    }
    if isinstance(cfg, LiveStageConfig):
        kw["alpha_lr"] = cfg.alpha_lr
    if cfg.deepspeed is not None:
        if "deepspeed" not in {f.name for f in dataclasses.fields(DistillConfig)}:
            raise ValueError(f"{cfg.method}.deepspeed is set but this lmmops.vectors.train has no DeepSpeed path")
        kw["deepspeed"] = str(ctx.path(cfg.deepspeed))
    if cfg.selection_rounds < 1:
        raise ValueError(f"{cfg.method}.selection_rounds must be >= 1, got {cfg.selection_rounds}")
    if cfg.workers < 1:
        raise ValueError(f"{cfg.method}.workers must be >= 1, got {cfg.workers}")
    return DistillConfig(**kw)


def base_reference(cfg: VectorStageConfig, ctx: StageContext, spec: str, model: Any,
                   processor: Any) -> tuple[Any, Path | None]:
    """(BaseModelRef, directory to log with the vectors or None): the registered version when one matches."""
    from lmmops.vectors.bundle import BaseModelRef, fingerprint_version

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
    import torch

    from lmmops.data.loaders import load_vqa
    from lmmops.models import load_model
    from lmmops.vectors import stage_lib as lib
    from lmmops.vectors.bundle import read_manifest, save_bundle
    from lmmops.vectors.distributed import launch_device

    method = cfg.method
    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)

    # 1. Everything that can be wrong in the config or the data fails here, before the model is loaded.
    splits = {split: load_vqa(data_dir, split) for split in lib.SPLITS}
    pools = lib.select_pools(splits, cfg.tasks, shots=cfg.shots, where=f"{method}.tasks")
    dcfg = distill_config(cfg, ctx)
    version = data_version(ctx, data_dir)
    spec = ctx.model_spec(cfg.model)
    # cuda:LOCAL_RANK on a GPU host (one process per GPU under torchrun / the deepspeed launcher), else cpu.
    model, processor = load_model(spec, device=launch_device())
    eval_kw = {"batch_size": cfg.eval_batch_size, "max_new_tokens": cfg.max_new_tokens,
               "instruction": cfg.instruction, "num_beams": cfg.num_beams, "answer_cut": cfg.answer_cut}
    rank = launcher_rank()
    if rank != 0:  # a launcher's other ranks: train (the collective part), then leave the rest to rank 0
        log.info("%s: rank %d: pools %s", method, rank, list(pools))
        lib.train_pools(dcfg, model, processor, pools, rounds=cfg.selection_rounds,
                        checkpoint_dir=ctx.path(cfg.checkpoint_dir), eval_kw=eval_kw, progress=False)
        return {}
    base, base_dir = base_reference(cfg, ctx, spec, model, processor)
    log.info("%s: pools %s; base model %s version %s", method, {p: len(v["train"]) for p, v in pools.items()},
             base.name, base.version)
    ctx.run.set_tags({"lmmops.data_version": version, "lmmops.base_model": base.name,
                      "lmmops.base_model_version": base.version, "lmmops.teacher_strategy": lib.TEACHER_STRATEGY,
                      "lmmops.teacher_shots": cfg.shots})

    # 2. Train each pool; choose among the segment ends on the val split only. On CPU without DeepSpeed the pools
    #    may train in `workers` processes (same vectors as one process; see stage_lib.train_pools).
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

    training = lib.train_pools(dcfg, model, processor, pools, rounds=cfg.selection_rounds,
                               checkpoint_dir=ctx.path(cfg.checkpoint_dir), eval_kw=eval_kw, workers=workers,
                               model_spec=spec, on_log=on_log, on_pool=on_pool, progress=True)

    # 3. The test split, once, with the selected vectors; zero-shot and k-shot ICL beside them; timings.
    test = lib.evaluate_test(model, processor, {p: t.vectors for p, t in training.items()}, pools, shots=cfg.shots,
                             seed=cfg.seed, repeats=cfg.latency_repeats, icl_draws=cfg.icl_draws,
                             icl_cache_dir=ctx.path(cfg.icl_reference_dir) if cfg.icl_reference_dir else None,
                             **eval_kw)
    trainable = next(iter(training.values())).vectors.num_parameters()
    metrics = lib.stage_metrics(training, test, trainable_params=trainable, shots=cfg.shots,
                                icl_draws=cfg.icl_draws)
    latency = {"vectors": test.latency_rel("vectors"), "icl": test.latency_rel("icl")}
    ctx.run.log_metrics({"latency_rel": latency["vectors"], "icl_latency_rel": latency["icl"],
                         "train_seconds": sum(t.train_seconds for t in training.values())})

    # 4. The bundle (a DVC output), logged as a pyfunc and registered; champion by the val margin.
    out = save_bundle(ctx.path(cfg.out_dir), {p: t.vectors for p, t in training.items()}, model, method=method,
                      base=base, shots=cfg.shots, val_acc={p: t.val_acc for p, t in training.items()},
                      steps={p: t.step for p, t in training.items()},
                      train_items={p: len(v["train"]) for p, v in pools.items()}, instruction=cfg.instruction,
                      max_new_tokens=cfg.max_new_tokens, teacher_strategy=lib.TEACHER_STRATEGY,
                      extra={"data_version": version})
    val_mean = float(read_manifest(out)["val_acc_mean"])
    tags = {"method": method, "teacher_strategy": lib.TEACHER_STRATEGY, "shots": cfg.shots,
            "base_model": base.name, "base_model_version": base.version, "val_acc_mean": repr(val_mean),
            "pools": ",".join(training), "data_version": version, "stage_run": ctx.run.run_id}
    with tempfile.TemporaryDirectory(prefix="lmmops-base-") as tmp:
        logged_base = base_dir
        if not base.registered and logged_base is None:  # e.g. a `tiny:` model: save it to log it
            logged_base = Path(tmp) / "base"
            model.save_pretrained(logged_base)
            processor.save_pretrained(logged_base)
        uri, model_version = tracking.log_vector_model(ctx.run, out, cfg.registered_name,
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
    table = lib.results_markdown(method, metrics, latency, cfg.shots)
    table += (f"\nRegistered: {cfg.registered_name} version {model_version} (challenger"
              f"{', champion' if moved else ''}); base model {base.name} version {base.version}.\n")
    (report_dir / "results.md").write_text(table)
    results = {
        "method": method, "data_version": version, "base_model": base.as_dict(), "shots": cfg.shots,
        "teacher_strategy": lib.TEACHER_STRATEGY, "metrics": metrics, "latency_rel": latency["vectors"],
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
