"""The pipeline stages and the one function that runs any of them.

`run_stage(name, cfg, root)` is the single code path behind `lmmops <stage>` (used by dvc.yaml) and
the Prefect flows in flows/: it opens an MLflow run with the lineage tags, calls the stage's
implementation, logs the returned metrics and writes them to `metrics/<stage>.json` for DVC.

A stage implementation is a function `(cfg, ctx: StageContext) -> dict[str, float]` living next to
its library code (e.g. `lmmops.stages.data:generate`). They are imported lazily so that the command
line and the flows start fast and flows/ never imports torch.

Under a launcher (torchrun, deepspeed; `RANK` set), only rank 0 opens the MLflow run and writes the metrics file;
the other ranks run the implementation with a `tracking.QuietRun`, and a stage that supports several ranks (live,
mimic) returns on them after the collective part.

The order of STAGES is the order of dvc.yaml.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmops.config import STAGE_CONFIGS, flatten, load_stage_config, params_hash, to_dict

log = logging.getLogger("lmmops")


@dataclass(frozen=True)
class Stage:
    name: str
    impl: str  # "module:function"
    help: str
    key_metrics: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "generate",
            "lmmops.stages.data:generate",
            "write the five synthetic dataset families into data/ (real public formats) and dvc-add them",
            ("files", "vqa_questions", "deepscaler_rows", "multimodal_rows", "sokoban_levels", "seconds"),
        ),
        Stage(
            "validate",
            "lmmops.stages.data:validate",
            "run one Great Expectations suite per dataset family; fail with a file/row/field report",
            ("success", "failures", "rows", "seconds"),
        ),
        Stage(
            "bootstrap",
            "lmmops.stages.models:bootstrap",
            "train the embedded default base model (tiny LLaVA) from scratch; register it as lmmops-base@champion",
            ("icl_acc_0shot", "icl_acc_1shot", "icl_acc_8shot", "icl_chance", "icl_twin_rate_8shot",
             "reasoning_format_rate", "reasoning_accuracy", "params", "seconds"),
        ),
        Stage(
            "index",
            "lmmops.stages.icl:index",
            "embed the support split into faiss indexes (image, question, question+answer) and cache the base "
            "model's image features of every support image",
            ("support_items", "cached_images", "seconds"),
        ),
        Stage(
            "icl-eval",
            "lmmops.stages.icl:icl_eval",
            "k-shot ICL for every retrieval strategy and shot count, manipulations, TR/TL, copy rates, plots",
            ("acc/zero-shot/0shot", "acc/RS/1shot", "acc/RS/8shot", "acc/SI/8shot", "acc/SQ/8shot", "copy/RS/8shot",
             "copy/SQ/8shot", "copy/SQA/8shot", "TR", "TL", "seconds"),
        ),
        Stage(
            "icl-reference",
            "lmmops.stages.vectors:icl_reference",
            "the test-split k-shot ICL reference of every task pool (random demos from the pool's train items) that "
            "live and mimic read and check: per-item scores and timings in reports/icl_reference/",
            ("icl_acc/mean", "pools", "seconds"),
        ),
        Stage(
            "live",
            "lmmops.stages.vectors:live",
            "distil LIVE vectors (per layer) from the k-shot ICL teacher, one set per task pool; select on val, test "
            "once; register the bundle as an lmmops-live pyfunc version (challenger; champion by val margin)",
            ("test_acc/mean", "icl_acc/mean", "zero_shot_acc/mean", "val_acc/mean", "gap_to_icl/mean",
             "gain_over_zero_shot/mean", "latency_rel", "trainable_params", "seconds"),
        ),
        Stage(
            "mimic",
            "lmmops.stages.vectors:mimic",
            "distil MimIC head shifts from the k-shot ICL teacher, one set per task pool; select on val, test "
            "once; register the bundle as an lmmops-mimic pyfunc version (challenger; champion by val margin)",
            ("test_acc/mean", "icl_acc/mean", "zero_shot_acc/mean", "val_acc/mean", "gap_to_icl/mean",
             "gain_over_zero_shot/mean", "latency_rel", "trainable_params", "seconds"),
        ),
        Stage(
            "vector-baselines",
            "lmmops.stages.vector_baselines:vector_baselines",
            "the baselines of LIVE/MimIC per task pool: LoRA (r 16, q/k/v/o), task vector, function vector, ICV; "
            "choices on val, test once; accuracy, trainable parameters, latency vs zero-shot",
            ("test_acc/zero-shot/mean", "test_acc/lora/mean", "test_acc/task_vector/mean",
             "test_acc/function_vector/mean", "test_acc/icv/mean", "trainable_params/lora", "latency_rel/lora",
             "seconds"),
        ),
    ]
}
assert set(STAGES) == set(STAGE_CONFIGS), "every stage needs a typed config in lmmops.config"


class StageFailed(RuntimeError):
    """A stage ran to the end but its result is a failure (e.g. validation found bad rows).

    The metrics are still logged to the (FAILED) MLflow run; the command line exits non-zero."""

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


@dataclass
class StageContext:
    """What a stage implementation gets besides its config: the repo root and its MLflow run."""

    root: Path
    run: Any  # lmmops.tracking.StageRun

    def path(self, relative: str | Path) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def model_spec(self, spec: str) -> str:
        """A model spec from params.yaml: URIs and `tiny:` as they are, a directory relative to the root.

        `load_model` takes no URI: pass the result through `tracking.resolve_model_spec` first."""
        if spec.startswith("tiny:") or "://" in spec or spec.startswith(("models:/", "runs:/")):
            return spec
        return str(self.path(spec))


def metrics_path(root: Path, stage: str) -> Path:
    return Path(root) / "metrics" / f"{stage}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def launcher_rank() -> int:
    """This process's rank under a launcher (torchrun, deepspeed: the RANK variable), 0 without one."""
    return int(os.environ.get("RANK", "0") or 0)


def run_stage(name: str, cfg: Any | None = None, *, root: Path | None = None,
              params_path: Path | None = None) -> dict[str, float]:
    """Run stage `name` with `cfg` (or its section of params.yaml) inside a tracked MLflow run."""
    from lmmops import tracking  # here, not at the top: mlflow costs ~1.5 s to every `lmmops` command and flow

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    root = Path(root or Path.cwd()).resolve()
    if cfg is None:
        cfg = load_stage_config(name, params_path or root / "params.yaml")
    stage = STAGES[name]
    module, func = stage.impl.split(":")
    impl = getattr(importlib.import_module(module), func)

    started = time.perf_counter()
    rank = launcher_rank()
    if rank != 0:  # under torchrun / the deepspeed launcher: rank 0 alone tracks and writes the results
        log.info("stage %s: rank %d: starting (no MLflow run, no metrics file: rank 0 writes them)", name, rank)
        metrics = dict(impl(cfg, StageContext(root=root, run=tracking.QuietRun(root))) or {})
        log.info("stage %s: rank %d: done in %.1f s", name, rank, time.perf_counter() - started)
        return metrics
    log.info("stage %s: starting", name)
    with tracking.stage_run(name, root=root, params=flatten(to_dict(cfg)), params_hash=params_hash(cfg)) as run:
        if stage.key_metrics:
            run.set_key_metrics(list(stage.key_metrics))
        try:
            metrics = dict(impl(cfg, StageContext(root=root, run=run)) or {})
        except StageFailed as exc:
            run.log_metrics(exc.metrics)
            raise
        seconds = round(time.perf_counter() - started, 2)
        run.log_metrics({**metrics, "seconds": seconds})
        # The metrics file is git-tracked for `dvc metrics diff`: keep it deterministic (no timings).
        write_json_atomic(metrics_path(root, name), metrics)
    log.info("stage %s: done in %.1f s", name, time.perf_counter() - started)
    return metrics
