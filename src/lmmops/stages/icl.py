"""Stage implementations of ICL configuration (docs/methods.md §1-2): `index` and `icl-eval` (glue: lmmops.icl ->
MLflow/DVC).

    lmmops index       embed the support split (image: the base model's own vision features; question and
                       question+answer: MiniLM) into faiss indexes under models/index/<space>/, and store the
                       demo feature cache (the base model's image features of every support image) in
                       models/index/demo_features/; manifests name the data version and the embedder
    lmmops icl-eval    k-shot ICL on the query split for every (strategy, shots) in params.yaml, the
                       manipulations at (analysis_strategy, analysis_shots), TR/TL, copy rates; one nested
                       MLflow run per run, plots of accuracy vs shots and copy rate, reports/icl_eval/;
                       with `pool_by: task` each query's demonstrations come from its own task's support items

Staleness: every index and the feature cache carry the data version (the md5 in data.dvc) and the
embedder name (which includes a fingerprint of the model weights). `icl-eval` loads them with the current
values and fails with StaleIndexError before generating anything when they differ; `dvc repro` rebuilds
`index` whenever data/, the model or the code changes (dvc.yaml deps), so a stale index is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from lmmops import tracking
from lmmops.config import ICLEvalConfig, IndexConfig
from lmmops.data.loaders import load_vqa
from lmmops.eval import plots
from lmmops.icl import ModelImageEmbedder, PixelImageEmbedder, TextEmbedder
from lmmops.icl.cache import DemoFeatureCache, image_key
from lmmops.icl.experiment import (
    check_plan,
    curves,
    explain_findings,
    findings,
    flat_metrics,
    plan_runs,
    results_table,
    run_spec,
)
from lmmops.icl.index import VectorIndex
from lmmops.icl.inference import ICLRunner
from lmmops.icl.retrieval import STRATEGIES, PooledRetriever, Retriever
from lmmops.models import load_model
from lmmops.stages import StageContext, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY = "index.json"
CACHE_DIR = "demo_features"


def data_version(ctx: StageContext, data_dir: Path) -> str:
    """The DVC md5 of data/ when it is the repo's data.dvc tree, else a hash of its manifest.json."""
    if data_dir.resolve() == (ctx.root / "data").resolve():
        md5 = tracking.dvc_data_md5(ctx.root)
        if md5:
            return md5
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    return "unversioned:" + str(data_dir.resolve())


def _embedders(kind: str, model: Any, processor: Any, batch_size: int) -> tuple[Any, Any]:
    image = ModelImageEmbedder(model, processor, batch_size=batch_size) if kind == "model" else PixelImageEmbedder()
    return TextEmbedder(batch_size=batch_size), image


def index(cfg: IndexConfig, ctx: StageContext) -> dict[str, float]:
    torch.set_num_threads(cfg.threads)
    data_dir = ctx.path(cfg.data_dir)
    support = load_vqa(data_dir, cfg.support_split)
    version = data_version(ctx, data_dir)
    model, processor = load_model(tracking.resolve_model_spec(ctx.model_spec(cfg.model)))
    text, image = _embedders(cfg.image_embedder, model, processor, cfg.batch_size)
    retriever = Retriever(support, text_embedder=text, image_embedder=image, index_kind=cfg.kind, data_version=version)

    # Build everything in a temporary directory beside out_dir and swap it in at the end: a failure
    # leaves the previous index whole.
    out = ctx.path(cfg.out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    metrics: dict[str, float] = {"support_items": float(len(support))}
    cache_name = None
    if cfg.demo_cache:
        if cfg.image_embedder != "model":
            raise ValueError("index.demo_cache needs index.image_embedder: model (the cache holds the model's "
                             "features)")
        cache = DemoFeatureCache.build(image, [it.image_path for it in support], data_version=version)
        cache.save(tmp / CACHE_DIR)
        cache_name = cache.manifest.model
        # The image index reuses the cached features: the vision tower runs once per support image.

        retriever.use_vectors("image", image.pool([cache.get(image_key(it.image_path)) for it in support]))
        metrics["cached_images"] = float(len(cache))
        metrics["image_tokens"] = float(next(iter(cache.features.values())).shape[0])
    spaces: dict[str, dict[str, Any]] = {}
    for space in cfg.spaces:
        vi = retriever.index(space)
        vi.save(tmp / space)
        spaces[space] = {"embedder": vi.manifest.embedder, "dim": vi.dim, "kind": vi.kind, **vi.manifest.params}
        metrics[f"dim/{space}"] = float(vi.dim)
    summary = {"support_split": cfg.support_split, "count": len(support), "data_version": version,
               "image_embedder": cfg.image_embedder, "kind": cfg.kind, "spaces": spaces,
               "demo_cache": cache_name}
    write_json_atomic(tmp / SUMMARY, summary)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    ctx.run.set_tags({"lmmops.index.data_version": version, "lmmops.index.image_embedder": image.name})
    ctx.run.log_dict(summary, "index/index.json")
    ctx.run.log_artifact(out, "index")
    log.info("index: %d support items, spaces %s, demo cache %s", len(support), ", ".join(spaces), bool(cache_name))
    return metrics


def load_index_summary(index_dir: Path) -> dict[str, Any]:
    path = index_dir / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no index at {index_dir} (missing {SUMMARY}); run `lmmops index` first") from None


def icl_eval(cfg: ICLEvalConfig, ctx: StageContext) -> dict[str, float]:
    import matplotlib.pyplot as plt

    torch.set_num_threads(cfg.threads)
    data_dir, index_dir = ctx.path(cfg.data_dir), ctx.path(cfg.index_dir)
    version = data_version(ctx, data_dir)
    summary = load_index_summary(index_dir)

    # 1. Everything that can be wrong is checked before the first generation: the plan, the index and
    #    the cache against the current data version and model.
    specs = plan_runs(cfg.strategies, cfg.shots, manipulations=cfg.manipulations,
                      analysis=(cfg.analysis_strategy, cfg.analysis_shots) if cfg.manipulations else None)
    unknown = [s for s in cfg.strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"icl-eval.strategies: unknown strategy {unknown[0]!r}; strategies: {', '.join(STRATEGIES)}")
    support = load_vqa(data_dir, summary["support_split"])
    queries = load_vqa(data_dir, cfg.query_split)
    if cfg.max_queries:
        queries = queries[: cfg.max_queries]
    model, processor = load_model(tracking.resolve_model_spec(ctx.model_spec(cfg.model)))
    text, image = _embedders(summary["image_embedder"], model, processor, 64)
    retriever = Retriever(support, text_embedder=text, image_embedder=image, data_version=version)
    indexes = {space: VectorIndex.load(index_dir / space, embedder_name=retriever.index_name(space),
                                       data_version=version) for space in summary["spaces"]}
    retriever = Retriever(support, text_embedder=text, image_embedder=image, indexes=indexes, data_version=version)
    if cfg.pool_by == "task":
        retriever = PooledRetriever(retriever)
        log.info("icl-eval: support pools %s", retriever.pools)
    check_plan(specs, retriever, queries)
    cache = None
    if cfg.use_demo_cache:
        cache = DemoFeatureCache.load(index_dir / CACHE_DIR, model_fingerprint=image.name, data_version=version)
    runner = ICLRunner(model, processor, cache=cache, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                       num_beams=cfg.num_beams, answer_cut=cfg.answer_cut)

    # 2. The runs, one nested MLflow run each.
    out_dir = ctx.path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[Any, Any] = {}
    for n, spec in enumerate(specs, 1):
        log.info("icl-eval: run %d/%d: %s", n, len(specs), spec.name)
        result = run_spec(spec, queries, retriever, runner, seed=cfg.seed, done=results)
        results[spec] = result
        tags = {"strategy": spec.strategy, "shots": spec.shots, "manipulation": spec.manipulation,
                "oracle": spec.oracle, "lmmops.parent_stage": "icl-eval"}
        with ctx.run.child(spec.name, tags=tags) as child:
            child.log_params({"strategy": spec.strategy, "shots": spec.shots, "manipulation": spec.manipulation})
            child.log_metrics(result.metrics)
            child.log_dict({"records": result.records}, "predictions.json")
        ctx.run.log_metrics({"runs_done": float(n)}, step=n)

    # 3. Tables, findings and plots.
    metrics = flat_metrics(results)
    found = findings(results)
    zero = next((r for s, r in results.items() if s.strategy == "zero-shot"), None)
    oracle = {s for s in cfg.strategies if s in STRATEGIES and STRATEGIES[s].oracle}
    fig = plots.accuracy_vs_shots(curves(results, "accuracy"), zero_shot=zero.metrics["accuracy"] if zero else None,
                                  oracle=oracle)
    ctx.run.log_figure(fig, "icl_eval/accuracy_vs_shots.png")
    fig.savefig(out_dir / "accuracy_vs_shots.png", dpi=100)
    plt.close(fig)
    fig = plots.copy_rates(curves(results, "copy_rate"), oracle=oracle)
    ctx.run.log_figure(fig, "icl_eval/copy_rate.png")
    fig.savefig(out_dir / "copy_rate.png", dpi=100)
    plt.close(fig)
    table = results_table(results)
    lines = [f"- {k}: {v}" for k, v in found.items()]
    why = explain_findings(found)
    report = f"{table}\n\nFindings (the talk's, checked here):\n" + "\n".join(lines) + "\n"
    if why:
        report += "\nWhy a finding does not show here:\n" + "\n".join(f"- {w}" for w in why) + "\n"
    log.info("icl-eval results:\n%s", report)
    ctx.run.log_text(report, "icl_eval/results.md")
    (out_dir / "results.md").write_text(report)
    write_json_atomic(out_dir / "results.json", {
        "data_version": version, "queries": len(queries), "support": len(support), "pool_by": cfg.pool_by,
        "pools": getattr(retriever, "pools", {"all": len(support)}),
        "runs": [{"strategy": s.strategy, "shots": s.shots, "manipulation": s.manipulation, "oracle": s.oracle,
                  "metrics": r.metrics} for s, r in results.items()],
        "findings": found,
        "findings_explained": why,
    })
    ctx.run.log_metrics({"vision_images_encoded": float(runner.vision_images_encoded)})
    metrics.update({f"finding/{k}": float(v) for k, v in found.items() if isinstance(v, bool)})
    metrics["queries"] = float(len(queries))
    # acc_nodup/<run> (flat_metrics) are over these: the queries that are not near-copies of a train item
    metrics["queries_nodup"] = float(sum(q.near_duplicate_of is None for q in queries))
    return metrics
