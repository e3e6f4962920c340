"""MLflow tracking: runs with lineage, dataset inputs, artifacts, models and registry aliases.

This is the only package in lmmops that imports mlflow; everything else returns metric dicts and
files, and the stage runner (`lmmops.stages`) hands them to a `StageRun` from here.

Store: by default the embedded SQLite store `sqlite:///<repo>/mlflow/mlflow.db` with artifacts under
`<repo>/mlflow/artifacts/`; the standard `MLFLOW_TRACKING_URI` environment variable overrides it (for
an MLflow server, which then decides where artifacts go), and `MLFLOW_EXPERIMENT_NAME` the experiment
(default "lmmops").

Lineage: every stage run carries the tags
    lmmops.stage            the pipeline stage
    mlflow.source.git.commit / lmmops.git_commit, lmmops.git_dirty   the code version
    lmmops.dvc_data_md5     the DVC md5 of the data tree it read (from data.dvc)
    lmmops.params_hash      a hash of the stage's effective config
and its flattened config as params; datasets are logged with `mlflow.data` as run inputs.

Promotion uses registry aliases (`challenger`, `champion`), never the deprecated stages.

How to look: `make ui` (MLflow UI on 127.0.0.1), or `lmmops report`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "lmmops"
STAGE_TAG = "lmmops.stage"
KEY_METRICS_TAG = "lmmops.key_metrics"
# Files the pipeline itself rewrites: a change in them does not make the code "dirty".
_PIPELINE_FILES = ("dvc.lock", "data.dvc", "metrics/")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(Path(root) / 'mlflow' / 'mlflow.db').resolve()}"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def configure(root: Path) -> str:
    """Point mlflow at this project's store and experiment; returns the experiment id."""
    import mlflow

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


# ----------------------------------------------------------------------------------------------------
# lineage


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
    import yaml

    path = Path(root) / dvc_file
    if not path.is_file():
        return None
    meta = yaml.safe_load(path.read_text()) or {}
    outs = meta.get("outs") or []
    return outs[0].get("md5") if outs else None


# ----------------------------------------------------------------------------------------------------
# runs


@dataclass
class StageRun:
    """A handle on an active MLflow run; methods are no-frills wrappers that keep mlflow in here."""

    run_id: str
    experiment_id: str
    root: Path

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        # MLflow caps a param value at 6000 characters; longer ones go in as artifacts.
        short = {k: v for k, v in params.items() if len(str(v)) <= 6000}
        mlflow.log_params(short)
        for k, v in params.items():
            if k not in short:
                mlflow.log_text(str(v), f"params/{k}.txt")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def set_key_metrics(self, names: list[str]) -> None:
        """Which metrics `lmmops report` shows for this run."""
        self.set_tags({KEY_METRICS_TAG: ",".join(names)})

    def log_dataset(
        self, df: Any, *, name: str, source: str, digest: str | None = None, context: str = "input"
    ) -> None:
        """Log a pandas DataFrame view of a dataset as a run input, with its source and digest."""
        import mlflow
        import mlflow.data

        with warnings.catch_warnings():
            # MLflow hints that integer columns cannot hold NaN: irrelevant for a logged dataset view
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            ds = mlflow.data.from_pandas(df, source=_dataset_source(source), name=name, digest=digest)
            mlflow.log_input(ds, context=context)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
        """A nested run for a sub-step (e.g. one strategy x shots of icl-eval)."""
        import mlflow

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


def _dataset_source(uri: str) -> Any:
    """The first registered MLflow dataset source that understands `uri` (a path, s3://, http...).

    Resolving it ourselves avoids MLflow's "can be interpreted in multiple ways" warning for paths."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    for cls in get_registered_sources():
        try:
            if cls._can_resolve(uri):
                return cls._resolve(uri)
        except Exception:  # a source type that cannot even inspect this uri: try the next
            continue
    return uri


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
    import mlflow

    root = Path(root).resolve()
    configure(root)
    sha, dirty = git_state(root)
    tags = {
        STAGE_TAG: stage,
        "mlflow.source.git.commit": sha,
        "lmmops.git_commit": sha,
        "lmmops.git_dirty": str(dirty).lower(),
        "lmmops.params_hash": params_hash,
        "lmmops.dvc_data_md5": dvc_data_md5(root) or "none",
    }
    with mlflow.start_run(run_name=run_name or stage, tags=tags) as active:
        run = StageRun(active.info.run_id, active.info.experiment_id, root)
        run.log_params(params)
        yield run


# ----------------------------------------------------------------------------------------------------
# reading runs back (for `lmmops report`)


def latest_stage_runs(root: Path, stages: list[str]) -> list[dict[str, Any]]:
    """The newest top-level run of each stage, as plain dicts (stage order kept; missing ones omitted)."""
    import mlflow

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
    import mlflow

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


# ----------------------------------------------------------------------------------------------------
# models and the registry


def log_model_dir(run: StageRun, local_dir: Path, artifact_path: str) -> str:
    """Log a saved model directory as run artifacts; returns its `runs:/` URI."""
    run.log_artifact(Path(local_dir), artifact_path=artifact_path)
    return f"runs:/{run.run_id}/{artifact_path}"


def register_model(model_uri: str, name: str, tags: dict[str, Any] | None = None) -> str:
    """Register a `runs:/<run>/<path>` artifact directory as a new version of `name`.

    Works for any logged directory (a save_pretrained checkpoint, a vector file + manifest), not only
    for MLflow-flavoured models. Returns the version number as a string."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("runs:/"):
        raise ValueError(f"register_model expects a runs:/<run_id>/<path> URI, got {model_uri!r}")
    run_id, _, path = model_uri[len("runs:/"):].partition("/")
    client = mlflow.MlflowClient()
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
    return str(mv.version)


def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def alias_version(name: str, alias: str) -> str | None:
    """The version that `name@alias` points at, or None when the alias (or model) does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote_if_better(
    name: str, version: str, *, score: float, champion_score: float | None, margin: float
) -> bool:
    """Give `version` the `challenger` alias; move `champion` to it when it beats the current champion
    by at least `margin` (or when there is no champion yet). Returns whether champion moved."""
    set_alias(name, "challenger", version)
    if champion_score is None or alias_version(name, "champion") is None or score >= champion_score + margin:
        set_alias(name, "champion", version)
        return True
    return False


def download_artifacts(uri: str, dst: Path | None = None) -> Path:
    """Download a `runs:/`, `models:/name@alias` or `models:/name/version` URI to a local directory."""
    import mlflow

    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="lmmops-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    return Path(local)



def version_tag(name: str, version: str, key: str) -> str | None:
    """The tag `key` of version `version` of registered model `name` (None when absent)."""
    import mlflow

    return mlflow.MlflowClient().get_model_version(name, str(version)).tags.get(key)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def matching_model_version(name: str, local_dir: Path, *, max_versions: int = 20) -> str | None:
    """The registered version of `name` whose logged checkpoint holds the same weights as `local_dir`, or None.

    Compared: every `*.safetensors` file and config.json of `local_dir`, by size (listed), then by sha256
    (downloaded only when the sizes agree). The champion is tried first, then the newest `max_versions`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.glob("*") if p.suffix == ".safetensors" or p.name == "config.json")
    if not local_dir.is_dir() or not any(p.suffix == ".safetensors" for p in files):
        return None
    client = mlflow.MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    champion = alias_version(name, "champion")
    versions = sorted(versions, key=lambda mv: (str(mv.version) != champion, -int(mv.version)))[:max_versions]
    sizes = {p.name: p.stat().st_size for p in files}
    for mv in versions:
        try:
            listed = {Path(f.path).name: f.file_size for f in mlflow.artifacts.list_artifacts(artifact_uri=mv.source)}
            if any(listed.get(n) != s for n, s in sizes.items()):
                continue
            with tempfile.TemporaryDirectory(prefix="lmmops-match-") as tmp:
                if all(_sha256(Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source}/{p.name}",
                                                                        dst_path=tmp))) == _sha256(p)
                       for p in files):
                    return str(mv.version)
        except (MlflowException, OSError):  # a version whose artifacts cannot be read is no match
            continue
    return None


def log_vector_model(
    run: StageRun,
    bundle_dir: Path,
    registered_name: str,
    *,
    base_model_dir: Path | None = None,
    tags: dict[str, Any] | None = None,
    artifact_name: str = "model",
) -> tuple[str, str]:
    """Log a vector bundle as an MLflow pyfunc model (`lmmops.tracking.pyfunc.VectorBundleModel`) in `run` and
    register it as a new version of `registered_name` with `tags`; returns (model URI, version).

    `base_model_dir` (the base model's save_pretrained directory) is logged with it when the base model is not a
    registered version (the bundle's manifest says which)."""
    import importlib.metadata

    import mlflow
    import mlflow.pyfunc

    from lmmops.tracking.pyfunc import VectorBundleModel

    active = mlflow.active_run()
    if active is None or active.info.run_id != run.run_id:
        raise RuntimeError(f"log_vector_model: run {run.run_id} is not the active MLflow run")
    artifacts = {"bundle": str(bundle_dir)}
    if base_model_dir is not None:
        artifacts["base_model"] = str(base_model_dir)
    requirements = []
    for package in ("torch", "transformers", "safetensors", "pillow", "pandas", "mlflow"):
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(package)
    with warnings.catch_warnings():
        # no signature or input example on purpose: inferring them would run the model at logging time
        warnings.filterwarnings("ignore", message=".*[Ss]ignature.*")
        warnings.filterwarnings("ignore", message=".*input example.*")
        info = mlflow.pyfunc.log_model(name=artifact_name, python_model=VectorBundleModel(), artifacts=artifacts,
                                       pip_requirements=requirements)
    mv = mlflow.register_model(info.model_uri, registered_name, tags={k: str(v) for k, v in (tags or {}).items()})
    return info.model_uri, str(mv.version)


def promote_by_tag(name: str, version: str, *, tag: str, margin: float) -> bool:
    """`promote_if_better` with both scores read back from the versions' tag `tag` (e.g. val_acc_mean): the new
    version becomes `challenger`; `champion` moves to it when its score >= the champion's + `margin`, or when
    there is no champion or the champion has no such tag. Returns whether champion moved."""
    score = version_tag(name, version, tag)
    if score is None:
        raise ValueError(f"{name} version {version} has no {tag!r} tag to compare with the champion")
    champion = alias_version(name, "champion")
    champion_score = version_tag(name, champion, tag) if champion else None
    return promote_if_better(name, version, score=float(score),
                             champion_score=float(champion_score) if champion_score is not None else None,
                             margin=margin)
