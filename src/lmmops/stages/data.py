"""Stage implementations of the data layer: `generate` and `validate` (glue: library -> DVC/MLflow).

    lmmops generate     write the synthetic datasets into data/ and `dvc add data` (updates data.dvc)
    lmmops validate     Great Expectations suites over every family; non-zero exit with a report

The generators and suites live in `lmmops.data`; this module only records their results: the data
version (DVC md5) as a run tag, the per-family tables as MLflow dataset inputs, the reports as
artifacts and DVC outputs under reports/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmmops import tracking
from lmmops.config import GenerateConfig, ValidateConfig
from lmmops.stages import StageContext, StageFailed, write_json_atomic
from lmmops.storage.dvc import dvc_add

log = logging.getLogger(__name__)


def _data_version(ctx: StageContext, data_dir: Path) -> str | None:
    """`dvc add` the data tree when it sits at the repo top (data.dvc) and return its md5."""
    if data_dir.parent.resolve() != ctx.root.resolve():
        return None  # a data tree elsewhere (tests, scratch dirs) is not what data.dvc versions
    dvc_add(ctx.root, data_dir.name)
    return tracking.dvc_data_md5(ctx.root, f"{data_dir.name}.dvc")


def generate(cfg: GenerateConfig, ctx: StageContext) -> dict[str, float]:
    from lmmops.data import generate_all

    data_dir = ctx.path(cfg.out_dir)
    summary = generate_all(cfg, ctx.root)
    md5 = _data_version(ctx, data_dir)
    if md5:
        ctx.run.set_tags({"lmmops.dvc_data_md5": md5})
        log.info("data/ versioned by data.dvc: md5 %s", md5)
    summary = {**summary, "dvc_md5": md5}
    write_json_atomic(ctx.path("reports/generate/summary.json"), summary)
    ctx.run.log_dict(summary, "generate/summary.json")
    counts = summary.get("counts", {})
    return {
        "files": float(summary.get("files", 0)),
        "vqa_questions": float(sum(counts.get("vqa", {}).values())),
        "deepscaler_rows": float(sum(counts.get("deepscaler", {}).values())),
        "multimodal_rows": float(sum(sum(v.values()) for k, v in counts.items()
                                     if k not in ("vqa", "deepscaler", "sokoban"))),
        "sokoban_levels": float(sum(counts.get("sokoban", {}).values())),
    }


def validate(cfg: ValidateConfig, ctx: StageContext) -> dict[str, float]:
    from lmmops.data import tabular_views, validate_all

    data_dir = ctx.path(cfg.data_dir)
    report = validate_all(cfg, ctx.root)
    text = report.format()
    out = ctx.path("reports/validate")
    write_json_atomic(out / "report.json", report.to_dict())
    (out / "report.txt").write_text(text + "\n")
    ctx.run.log_text(text, "validate/report.txt")
    ctx.run.log_dict(report.to_dict(), "validate/report.json")
    md5 = tracking.dvc_data_md5(ctx.root, f"{data_dir.name}.dvc") or "unversioned"
    for name, df in tabular_views(data_dir).items():
        ctx.run.log_dataset(df, name=name, source=str(data_dir), digest=f"{md5[:12]}-{name}"[:36],
                            context="validation")
    metrics = {
        "success": float(report.success),
        "failures": float(len(report.failures)),
        "rows": float(report.rows),
    }
    if not report.success:
        raise StageFailed(text, metrics)
    return metrics
