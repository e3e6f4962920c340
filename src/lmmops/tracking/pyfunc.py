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

`log_vector_model(...)` (in `lmmops.tracking`) logs and registers it. Run:
`python -m pytest tests/vectors/test_stages.py -q`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class VectorBundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper over `lmmops.vectors.bundle.VectorBundle` (base model + one vector set per task pool)."""

    def load_context(self, context: Any) -> None:
        from lmmops.models import load_model
        from lmmops.vectors.bundle import fingerprint_version, load_bundle, read_manifest

        bundle_dir = Path(context.artifacts["bundle"])
        base = read_manifest(bundle_dir)["base_model"]
        if base.get("registered"):
            uri = f"models:/{base['name']}/{base['version']}"
            model, processor = load_model(uri)
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
