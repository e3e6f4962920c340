"""The MLflow model registry: register logged directories, aliases and promotion, URIs to local checkpoints.

Any logged directory (a save_pretrained checkpoint, a vector bundle) registers as a version of a name.
Promotion uses registry aliases (`challenger`, `champion`), never the deprecated stages. `lmmops.models`
resolves no registry URIs: callers (the stages, the pyfunc, benchmarks) turn `models:/<name>@<alias>`,
`models:/<name>/<version>` or `runs:/<run_id>/<path>` into a local checkpoint directory with
`resolve_model_spec` and hand that to `load_model`.

Run: `python -m pytest tests/test_tracking.py -q`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException

from lmmops.tracking.runs import StageRun

# An MLflow URI: a scheme of 2+ characters and `:/` (so `C:/dir` stays a path and `tiny:llava` a tiny spec).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def log_model_dir(run: StageRun, local_dir: Path, artifact_path: str) -> str:
    """Log a saved model directory as run artifacts; returns its `runs:/` URI."""
    run.log_artifact(Path(local_dir), artifact_path=artifact_path)
    return f"runs:/{run.run_id}/{artifact_path}"


def register_model(model_uri: str, name: str, tags: dict[str, Any] | None = None) -> str:
    """Register a `runs:/<run>/<path>` artifact directory as a new version of `name`.

    Works for any logged directory (a save_pretrained checkpoint, a vector file + manifest), not only
    for MLflow-flavoured models. Returns the version number as a string."""
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
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def alias_version(name: str, alias: str) -> str | None:
    """The version that `name@alias` points at, or None when the alias (or model) does not exist."""
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_tag(name: str, version: str, key: str) -> str | None:
    """The tag `key` of version `version` of registered model `name` (None when absent)."""
    return mlflow.MlflowClient().get_model_version(name, str(version)).tags.get(key)


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


def download_artifacts(uri: str, dst: Path | None = None) -> Path:
    """Download a `runs:/`, `models:/name@alias` or `models:/name/version` URI to a local directory."""
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="lmmops-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    return Path(local)


def resolve_model_spec(spec: str | Path) -> str:
    """A `lmmops.models.load_model` spec with its MLflow URI resolved to a local checkpoint directory.

    `models:/<name>@<alias>`, `models:/<name>/<version>`, `runs:/<run_id>/<path>` (any `scheme:/` URI) are
    downloaded (`download_artifacts`) and give the save_pretrained directory in the download: the download
    itself, or the only directory below it with a config.json (e.g. a pyfunc model's artifacts/...).
    `tiny:<family>`, directories and GGUF files come back unchanged."""
    spec = str(spec)
    if not _URI.match(spec):
        return spec
    local = download_artifacts(spec)
    if (local / "config.json").is_file():
        return str(local)
    found = sorted(p.parent for p in local.glob("**/config.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{spec} (downloaded to {local}): expected one save_pretrained checkpoint "
                                f"(a directory with config.json), found {len(found)}")
    return str(found[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def matching_model_version(name: str, local_dir: Path, *, max_versions: int = 20) -> str | None:
    """The registered version of `name` whose logged checkpoint holds the same weights as `local_dir`, or None.

    Compared: every `*.safetensors` file and config.json of `local_dir`, by size (listed), then by sha256
    (downloaded only when the sizes agree). The champion is tried first, then the newest `max_versions`."""
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
