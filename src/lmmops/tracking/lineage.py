"""Lineage of a stage run: the code version, the data version, the config hash and the datasets it read.

Every stage run carries the tags
    lmmops.stage            the pipeline stage
    mlflow.source.git.commit / lmmops.git_commit, lmmops.git_dirty   the code version
    lmmops.dvc_data_md5     the DVC md5 of the data tree it read (from data.dvc)
    lmmops.params_hash      a hash of the stage's effective config
and datasets are logged with `mlflow.data` as run inputs (`log_dataset`).

Run: `python -m pytest tests/test_tracking.py -q`.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import yaml
from mlflow.data.dataset_source_registry import get_registered_sources

STAGE_TAG = "lmmops.stage"
# Files the pipeline itself rewrites: a change in them does not make the code "dirty".
_PIPELINE_FILES = ("dvc.lock", "data.dvc", "metrics/")


def git_state(root: Path) -> tuple[str, bool]:
    """(commit sha or "unknown", dirty) for the repository at root; pipeline-written files don't count."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    changed = [line[3:] for line in status if line[3:]]
    dirty = any(not path.startswith(_PIPELINE_FILES) for path in changed)
    return sha, dirty


def dvc_data_md5(root: Path, dvc_file: str = "data.dvc") -> str | None:
    """The md5 that data.dvc records for the data tree (None when the file is absent)."""
    path = Path(root) / dvc_file
    if not path.is_file():
        return None
    meta = yaml.safe_load(path.read_text()) or {}
    outs = meta.get("outs") or []
    return outs[0].get("md5") if outs else None


def lineage_tags(root: Path, stage: str, params_hash: str) -> dict[str, str]:
    """The lineage tags of a run of `stage` in the repository at `root` with config hash `params_hash`."""
    sha, dirty = git_state(root)
    return {
        STAGE_TAG: stage,
        "mlflow.source.git.commit": sha,
        "lmmops.git_commit": sha,
        "lmmops.git_dirty": str(dirty).lower(),
        "lmmops.params_hash": params_hash,
        "lmmops.dvc_data_md5": dvc_data_md5(root) or "none",
    }


def _dataset_source(uri: str) -> Any:
    """The first registered MLflow dataset source that understands `uri` (a path, s3://, http...).

    Resolving it ourselves avoids MLflow's "can be interpreted in multiple ways" warning for paths."""
    for cls in get_registered_sources():
        try:
            if cls._can_resolve(uri):
                return cls._resolve(uri)
        except Exception:  # a source type that cannot even inspect this uri: try the next
            continue
    return uri


def log_dataset(df: Any, *, name: str, source: str, digest: str | None = None, context: str = "input") -> None:
    """Log a pandas DataFrame view of a dataset as an input of the active run, with its source and digest."""
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold NaN: irrelevant for a logged dataset view
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        ds = mlflow.data.from_pandas(df, source=_dataset_source(source), name=name, digest=digest)
        mlflow.log_input(ds, context=context)
