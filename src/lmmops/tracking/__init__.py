"""MLflow tracking: stage runs with lineage, dataset inputs, artifacts, models and registry aliases.

The only package in lmmops that imports mlflow; everything else returns metric dicts and files, and the
stage runner (`lmmops.stages`) hands them to a `StageRun` from here. Modules: `runs` (the store, stage
runs, logging, reading runs back), `lineage` (git commit, DVC data md5, params hash tags, dataset
inputs), `registry` (registration, aliases, promotion, `models:/` URIs to local checkpoints), `pyfunc`
(the vector bundle as an MLflow pyfunc model). Call sites use the names re-exported here, except `pyfunc`,
which is imported by name where a bundle is logged: it depends on `lmmops.vectors`, which the other stages
(and their DVC deps) should not.

How to look: `make ui` (MLflow UI on 127.0.0.1), or `lmmops report`.
"""

from lmmops.tracking.lineage import STAGE_TAG, dvc_data_md5, git_state
from lmmops.tracking.registry import (
    alias_version,
    download_artifacts,
    log_model_dir,
    matching_model_version,
    promote_by_tag,
    promote_if_better,
    register_model,
    resolve_model_spec,
    set_alias,
    version_tag,
)
from lmmops.tracking.runs import (
    DEFAULT_EXPERIMENT,
    KEY_METRICS_TAG,
    QuietRun,
    StageRun,
    configure,
    default_tracking_uri,
    latest_stage_runs,
    run_info,
    stage_run,
    tracking_uri,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "KEY_METRICS_TAG",
    "STAGE_TAG",
    "QuietRun",
    "StageRun",
    "alias_version",
    "configure",
    "default_tracking_uri",
    "download_artifacts",
    "dvc_data_md5",
    "git_state",
    "latest_stage_runs",
    "log_model_dir",
    "matching_model_version",
    "promote_by_tag",
    "promote_if_better",
    "register_model",
    "resolve_model_spec",
    "run_info",
    "set_alias",
    "stage_run",
    "tracking_uri",
    "version_tag",
]
