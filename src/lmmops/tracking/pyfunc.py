"""The MLflow pyfunc of a vector bundle: `mlflow.pyfunc.load_model("models:/lmmops-mimic@champion")` answers
(image, question) pairs with the registered LIVE / MimIC vectors on their base model.

    model = mlflow.pyfunc.load_model("models:/lmmops-live@champion")
    model.predict(pd.DataFrame({"image": ["data/vqa/.../x.jpg"], "question": ["What is this?"],
                                "task": ["icl/colour/en"]}))          # -> ["red"]

Input: a pandas DataFrame with columns `image` (a file path, or the image file's bytes), `question` and an
optional `task` (a pool of the bundle, e.g. "icl/colour/en" or "vqa"; missing / empty: the bundle's default
pool, "vqa"). Output: a list of answer strings, one per row.

Artifacts of the logged model: `bundle` (the vector bundle directory, `lmmops.vectors.bundle`) and, only when
the base model is not a registered version, `base_model` (its save_pretrained directory). At load time the base
model comes from `models:/<name>/<version>` when the manifest names a registered version (the tracking URI of the
loading process decides which registry), else from the `base_model` artifact, whose weights must hash to the
manifest's "sha:" version; the vector files then check family, sizes, name and version.

`log_vector_model(...)` logs it in a stage run and registers it. Run:
`python -m pytest tests/vectors/test_stages.py -q`.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from lmmops.tracking.registry import resolve_model_spec
from lmmops.tracking.runs import StageRun


class VectorBundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper over `lmmops.vectors.bundle.VectorBundle` (base model + one vector set per task pool)."""

    def load_context(self, context: Any) -> None:
        # Imported when a model loads, not with every `import lmmops.tracking`: torch, transformers and the
        # vectors package take seconds, which `lmmops report` and every stage run would pay for nothing.
        from lmmops.models import load_model
        from lmmops.vectors.bundle import fingerprint_version, load_bundle, read_manifest

        bundle_dir = Path(context.artifacts["bundle"])
        base = read_manifest(bundle_dir)["base_model"]
        if base.get("registered"):
            uri = f"models:/{base['name']}/{base['version']}"
            model, processor = load_model(resolve_model_spec(uri))
            name, version = base["name"], str(base["version"])
        else:
            if "base_model" not in context.artifacts:
                raise FileNotFoundError(f"{bundle_dir}: the base model {base['name']} is not registered and was "
                                        "not logged with the vectors (no base_model artifact)")
            model, processor = load_model(context.artifacts["base_model"])
            # The version of an unregistered base model is the hash of its weights: recomputed from what loaded.
            name, version = base["name"], fingerprint_version(model, processor)
        self.bundle = load_bundle(bundle_dir, model, processor, base_model=name, base_model_version=version)

    # pd.DataFrame is a hint MLflow accepts without inferring a signature (any other would be read as a schema).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in ("image", "question") if c not in frame.columns]
        if missing:
            raise ValueError(f"input needs columns image and question (optional task); missing {missing}, "
                             f"got {list(frame.columns)}")
        tasks = list(frame["task"]) if "task" in frame.columns else None
        batch_size = int((params or {}).get("batch_size", 32))
        return self.bundle.answer(list(frame["image"]), [str(q) for q in frame["question"]], tasks,
                                  batch_size=batch_size)


def log_vector_model(
    run: StageRun,
    bundle_dir: Path,
    registered_name: str,
    *,
    base_model_dir: Path | None = None,
    tags: dict[str, Any] | None = None,
    artifact_name: str = "model",
) -> tuple[str, str]:
    """Log a vector bundle as an MLflow pyfunc model (`VectorBundleModel`) in `run` and register it as a new
    version of `registered_name` with `tags`; returns (model URI, version).

    `base_model_dir` (the base model's save_pretrained directory) is logged with it when the base model is not a
    registered version (the bundle's manifest says which)."""
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
