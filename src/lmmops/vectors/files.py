"""Vector files: a trained LIVE or MimIC vector set saved with what it was trained on, and loaded safely.

A vector file is a directory with two files:
  vectors.safetensors  the parameters (names as in `LiveVectors` / `MimicVectors`); safetensors header
                       metadata: one key, "lmmops_vectors", holding {"format", "method"} as sorted JSON
                       (safetensors writes several metadata keys in a per-process random order, which
                       made identical vectors differ byte-wise; with one key the file is reproducible);
  vectors.json         metadata: format version, method, num_parameters, the base model's family, model class,
                       num_layers, hidden_size, num_heads, num_kv_heads, head_dim, LIVE site, the base model's
                       identifier and version, the transformers and torch versions, and caller extras
                       (e.g. the teacher's strategy and shots).

`save_vectors(directory, vectors, model, base_model=..., base_model_version=...)` writes it;
`load_vectors(directory, model, base_model=..., base_model_version=...)` rebuilds the vector set and refuses
(VectorMismatchError, naming the file's side and the model's side) to load onto a base model it was not
trained for: another family or model class, layer count, hidden size, heads, KV heads, head size, LIVE
site, base-model identifier or base-model version. The identifier and version are the caller's names for
the base model (e.g. the registered model name and its MLflow version, or a checkpoint path and revision);
nothing here guesses them.

Run: `python -m pytest tests/vectors/test_files.py -q`.

Departures from the references: they save a bare state dict (torch.save) with no record of the base model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from lmmops.models import ModelAdapter, adapter_for
from lmmops.vectors.base import VectorMismatchError, VectorSet, mismatch_message, model_signature
from lmmops.vectors.live import LiveVectors
from lmmops.vectors.mimic import MimicVectors

FORMAT_VERSION = 1
TENSORS_FILE = "vectors.safetensors"
META_FILE = "vectors.json"
METHODS: dict[str, type[VectorSet]] = {"live": LiveVectors, "mimic": MimicVectors}
# What must agree between the file and the model it is loaded onto.
MATCH_KEYS = (
    "family",
    "model_class",
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "live_site",
    "base_model",
    "base_model_version",
)


@contextmanager
def replacing_directory(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out` to write into; when the block ends without error it replaces `out`
    whole (as an ordinary 0o755 directory), else it is removed and `out` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _adapter(model: nn.Module | ModelAdapter) -> ModelAdapter:
    return model if isinstance(model, ModelAdapter) else adapter_for(model)


def _model_side(adapter: ModelAdapter, base_model: str, base_model_version: str) -> dict[str, Any]:
    return {
        **model_signature(adapter),
        "live_site": adapter.live_site,
        "base_model": base_model,
        "base_model_version": base_model_version,
    }


def save_vectors(
    directory: str | Path,
    vectors: VectorSet,
    model: nn.Module | ModelAdapter,
    *,
    base_model: str,
    base_model_version: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `vectors` (trained on `model`) to `directory` (created); returns the directory."""
    adapter = _adapter(model)
    vectors.check_fits(adapter)
    if vectors.method not in METHODS:
        raise ValueError(f"unknown vector method {vectors.method!r}; known: {sorted(METHODS)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in vectors.state_dict().items()}
    header = json.dumps({"format": FORMAT_VERSION, "method": vectors.method}, sort_keys=True)
    save_file(tensors, str(out / TENSORS_FILE), metadata={"lmmops_vectors": header})
    meta = {
        "format": FORMAT_VERSION,
        "method": vectors.method,
        "num_parameters": vectors.num_parameters(),
        **_model_side(adapter, base_model, base_model_version),
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "extra": extra or {},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The JSON metadata of a vector file (checked for the format version and a known method)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no vector file metadata at {path}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: vector file format {meta.get('format')!r}, this lmmops reads {FORMAT_VERSION}")
    if meta.get("method") not in METHODS:
        raise ValueError(f"{path}: unknown vector method {meta.get('method')!r}; known: {sorted(METHODS)}")
    return meta


def load_vectors(
    directory: str | Path,
    model: nn.Module | ModelAdapter,
    *,
    base_model: str,
    base_model_version: str,
) -> VectorSet:
    """The vector set saved in `directory`, after checking it was trained for this base model (on CPU)."""
    meta = read_metadata(directory)
    adapter = _adapter(model)
    message = mismatch_message(
        f"vector file {directory} ({meta['method']})",
        meta,
        _model_side(adapter, base_model, base_model_version),
        MATCH_KEYS,
    )
    if message:
        raise VectorMismatchError(message)
    tensors = load_file(str(Path(directory) / TENSORS_FILE))
    cls = METHODS[meta["method"]]
    vectors = cls(meta["num_layers"], meta["hidden_size"], meta["num_heads"], meta["head_dim"])
    try:
        vectors.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise VectorMismatchError(f"vector file {directory}: tensors do not match its metadata: {exc}") from exc
    vectors.check_fits(adapter)
    return vectors
