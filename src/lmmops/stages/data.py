"""Stage implementations of the data layer: `generate` and `validate` (glue: library -> DVC/MLflow).

    lmmops generate     write the synthetic datasets into data/ and `dvc add data` (updates data.dvc)
    lmmops validate     check that data/ is the version data.dvc records, then Great Expectations suites over
                        every family; non-zero exit with a report (dvc.yaml runs it on every `dvc repro`)

The generators and suites live in `lmmops.data`; this module only records their results: the data
version (DVC md5) as a run tag, the per-family tables as MLflow dataset inputs, the reports as
artifacts and DVC outputs under reports/. `generate` also counts the held-out multimodal items that repeat a
train item (lmmops.data.duplicates) into its metrics, `duplicates/<kind>/<domain>/<split>`, which validate then
fails on item by item.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmmops import tracking
from lmmops.config import GenerateConfig, ValidateConfig
from lmmops.data import generate_all, tabular_views, validate_all
from lmmops.data.duplicates import duplicate_counts
from lmmops.stages import StageContext, StageFailed, write_json_atomic
from lmmops.storage.dvc import data_differs, dvc_add

log = logging.getLogger(__name__)


def _data_version(ctx: StageContext, data_dir: Path) -> str | None:
    """`dvc add` the data tree when it sits at the repo top (data.dvc) and return its md5."""
    if data_dir.parent.resolve() != ctx.root.resolve():
        return None  # a data tree elsewhere (tests, scratch dirs) is not what data.dvc versions
    dvc_add(ctx.root, data_dir.name)
    return tracking.dvc_data_md5(ctx.root, f"{data_dir.name}.dvc")


def _holds_real_data(data_dir: Path) -> bool:
    """True when data_dir has files but no synthetic manifest: a user's real datasets live there."""
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        return False
    manifest = data_dir / "manifest.json"
    try:
        return not json.loads(manifest.read_text()).get("synthetic", False)
    except (OSError, ValueError):
        return True


def generate(cfg: GenerateConfig, ctx: StageContext) -> dict[str, float]:
    data_dir = ctx.path(cfg.out_dir)
    if not cfg.synthetic:
        # Real datasets dropped into data/: nothing to write, only version what is there.
        if not data_dir.is_dir():
            raise StageFailed(f"{data_dir}: generate.synthetic is false but there is no data directory; "
                              "`lmmops ensure-data` restores it from the DVC cache or remote")
        summary: dict = {"out_dir": str(data_dir), "synthetic": False, "counts": {}, "totals": {}}
    else:
        if _holds_real_data(data_dir) and not cfg.overwrite_real_data:
            raise StageFailed(
                f"{data_dir} holds data that `generate` did not write (no synthetic manifest.json); refusing "
                "to replace it. Set generate.synthetic: false in params.yaml to use it, or "
                "generate.overwrite_real_data: true to replace it (data.dvc keeps the old version)."
            )
        summary = generate_all(cfg, ctx.root)
    md5 = _data_version(ctx, data_dir)
    if md5:
        ctx.run.set_tags({"lmmops.dvc_data_md5": md5})
        log.info("%s/ versioned by %s.dvc: md5 %s", data_dir.name, data_dir.name, md5)
    summary = {**summary, "out_dir": cfg.out_dir, "dvc_md5": md5}  # as configured: no machine paths
    summary.pop("file_list", None)  # the manifest inside data/ has every file with its sha256
    write_json_atomic(ctx.path("reports/generate/summary.json"), summary)
    ctx.run.log_dict(summary, "generate/summary.json")
    totals = summary.get("totals", {})
    return {
        "files": float(totals.get("files", 0)),
        "vqa_questions": float(totals.get("vqa_items", 0)),
        "deepscaler_rows": float(totals.get("deepscaler_items", 0)),
        "multimodal_rows": float(totals.get("multimodal_items", 0)),
        "sokoban_levels": float(totals.get("sokoban_levels", 0)),
        **_duplicate_counts(data_dir),
    }


def _duplicate_counts(data_dir: Path) -> dict[str, float]:
    """duplicate_counts of the data tree; none for real data that the strict loaders cannot read (validate says
    which row and why, and fails)."""
    try:
        found = duplicate_counts(data_dir)
    except (ValueError, OSError) as exc:  # DataError is a ValueError; an image that does not open an OSError
        log.warning("held-out items repeating a train item not counted: %s", exc)
        return {}
    repeated = {k: int(v) for k, v in found.items() if v}
    if repeated:
        log.warning("held-out items that repeat a train item (validate fails on each): %s", repeated)
    return found


def _check_versioned(ctx: StageContext, data_dir: Path) -> str | None:
    """data.dvc's md5 of the data tree at the repo top, after checking that data/ on disk is that version;
    None for a data tree elsewhere (tests, scratch dirs)."""
    dvc_file = ctx.root / f"{data_dir.name}.dvc"
    if data_dir.parent.resolve() != ctx.root.resolve() or not dvc_file.is_file():
        return None
    differs = data_differs(ctx.root, data_dir.name)
    if differs:
        raise StageFailed(
            f"{data_dir} is not the version {dvc_file.name} records ({differs}). Run `dvc add {data_dir.name}` to "
            f"version what is on disk, `dvc checkout {dvc_file.name}` to restore the recorded version, or "
            "`lmmops ensure-data` if it is missing; stages only train on versioned data."
        )
    return tracking.dvc_data_md5(ctx.root, dvc_file.name)


def validate(cfg: ValidateConfig, ctx: StageContext) -> dict[str, float]:
    data_dir = ctx.path(cfg.data_dir)
    version = _check_versioned(ctx, data_dir)
    report = validate_all(cfg, ctx.root)
    text = report.format()
    out = ctx.path("reports/validate")
    # The data version is in the report so that the stages depending on it rerun when data.dvc changes.
    write_json_atomic(out / "report.json", {"dvc_data_md5": version, **report.to_dict()})
    (out / "report.txt").write_text(text + "\n")
    ctx.run.log_text(text, "validate/report.txt")
    ctx.run.log_dict(report.to_dict(), "validate/report.json")
    md5 = version or tracking.dvc_data_md5(ctx.root, f"{data_dir.name}.dvc") or "unversioned"
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
