"""MLflow runs: the store, one run per pipeline stage, what a run logs, and reading runs back.

Store: by default the embedded SQLite store `sqlite:///<repo>/mlflow/mlflow.db` with artifacts under
`<repo>/mlflow/artifacts/`; the standard `MLFLOW_TRACKING_URI` environment variable overrides it (for
an MLflow server, which then decides where artifacts go), and `MLFLOW_EXPERIMENT_NAME` the experiment
(default "lmmops").

`stage_run(...)` opens a run with the lineage tags of `lmmops.tracking.lineage` and the flattened config as
params; it yields a `StageRun`, whose methods are the only way stage code logs (a `QuietRun` logs nothing).
`latest_stage_runs` and `run_info` read runs back for `lmmops report` and the tests.

Run: `python -m pytest tests/test_tracking.py -q`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from lmmops.tracking import lineage
from lmmops.tracking.lineage import STAGE_TAG, lineage_tags

DEFAULT_EXPERIMENT = "lmmops"
KEY_METRICS_TAG = "lmmops.key_metrics"


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def configure(root: Path) -> str:
    """Point mlflow at this project's store and experiment; returns the experiment id."""
    root = Path(root).resolve()
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        (root / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # A SQLite store would otherwise put artifacts in ./mlruns relative to wherever we run.
        location = (root / "mlflow" / "artifacts").as_uri() if uri.startswith("sqlite:") else None
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@dataclass
class StageRun:
    """A handle on an active MLflow run; methods are no-frills wrappers that keep mlflow in here."""

    run_id: str
    experiment_id: str
    root: Path

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; longer ones go in as artifacts.
        short = {k: v for k, v in params.items() if len(str(v)) <= 6000}
        mlflow.log_params(short)
        for k, v in params.items():
            if k not in short:
                mlflow.log_text(str(v), f"params/{k}.txt")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def set_key_metrics(self, names: list[str]) -> None:
        """Which metrics `lmmops report` shows for this run."""
        self.set_tags({KEY_METRICS_TAG: ",".join(names)})

    def log_dataset(
        self, df: Any, *, name: str, source: str, digest: str | None = None, context: str = "input"
    ) -> None:
        """Log a pandas DataFrame view of a dataset as a run input, with its source and digest."""
        lineage.log_dataset(df, name=name, source=source, digest=digest, context=context)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
        """A nested run for a sub-step (e.g. one strategy x shots of icl-eval)."""
        with mlflow.start_run(run_name=name, nested=True, tags={k: str(v) for k, v in (tags or {}).items()}) as r:
            yield StageRun(r.info.run_id, r.info.experiment_id, self.root)


class QuietRun(StageRun):
    """A StageRun that records nothing: what a launcher's rank other than 0 gets (rank 0 holds the MLflow run)."""

    def __init__(self, root: Path):
        super().__init__(run_id="", experiment_id="", root=Path(root))

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_dataset(self, df: Any, *, name: str, source: str, digest: str | None = None,
                    context: str = "input") -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
        yield self


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    root: Path,
    params: dict[str, Any],
    params_hash: str,
    run_name: str | None = None,
) -> Iterator[StageRun]:
    """Start a run for one pipeline stage with all lineage tags set; FAILED if the body raises."""
    root = Path(root).resolve()
    configure(root)
    tags = lineage_tags(root, stage, params_hash)
    with mlflow.start_run(run_name=run_name or stage, tags=tags) as active:
        run = StageRun(active.info.run_id, active.info.experiment_id, root)
        run.log_params(params)
        yield run


def latest_stage_runs(root: Path, stages: list[str]) -> list[dict[str, Any]]:
    """The newest top-level run of each stage, as plain dicts (stage order kept; missing ones omitted)."""
    exp_id = configure(root)
    client = mlflow.MlflowClient()
    out = []
    for stage in stages:
        runs = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{STAGE_TAG}` = '{stage}'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
        runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # nested runs are not stage runs
        if not runs:
            continue
        r = runs[0]
        keys = [k for k in r.data.tags.get(KEY_METRICS_TAG, "").split(",") if k]
        metrics = {k: r.data.metrics[k] for k in keys if k in r.data.metrics} if keys else dict(r.data.metrics)
        end = r.info.end_time or r.info.start_time
        out.append(
            {
                "stage": stage,
                "run_id": r.info.run_id,
                "experiment_id": exp_id,
                "status": r.info.status,
                "start_time_ms": r.info.start_time,
                "duration_s": round((end - r.info.start_time) / 1000.0, 1),
                "git_commit": r.data.tags.get("lmmops.git_commit", ""),
                "git_dirty": r.data.tags.get("lmmops.git_dirty", ""),
                "dvc_data_md5": r.data.tags.get("lmmops.dvc_data_md5", ""),
                "params_hash": r.data.tags.get("lmmops.params_hash", ""),
                "metrics": metrics,
            }
        )
    return out


def run_info(run_id: str) -> dict[str, Any]:
    """Tags, params, metrics and dataset inputs of one run (used by tests and the report)."""
    r = mlflow.MlflowClient().get_run(run_id)
    inputs = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source,
         "context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), None)}
        for d in (r.inputs.dataset_inputs if r.inputs else [])
    ]
    return {
        "status": r.info.status,
        "tags": dict(r.data.tags),
        "params": dict(r.data.params),
        "metrics": dict(r.data.metrics),
        "inputs": inputs,
    }
