"""Vector bundles: every pool's vector set of one `live` / `mimic` run in one directory, and answering with them.

A bundle (`models/live/`, `models/mimic/`; what the registered MLflow model versions hold) is

    manifest.json            format, method, pools ({pool: {path, val_acc, step, train_items}}), default_pool
                             ("vqa" when trained, else the first pool), base_model {name, version, registered,
                             path}, teacher {strategy: "RS-within-task", shots}, val_acc_mean, instruction,
                             max_new_tokens, num_parameters (one set), extra (caller's: data version, ...)
    pools/<pool-dir>/        one vector file per pool (`lmmops.vectors.files`: vectors.safetensors +
                             vectors.json, which records the base model's architecture, name and version)

`save_bundle(...)` writes it into a temporary directory beside the target and renames it into place (a crash
leaves the previous bundle whole). `load_bundle(directory, model, processor, base_model=..., base_model_version=...)`
loads every pool's vectors onto a base model the caller names; `lmmops.vectors.files` refuses (VectorMismatchError,
naming both sides) a base model of another family, size, name or version. `VectorBundle.answer(images, questions,
tasks)` answers (image, question) pairs, each with the vectors of its task's pool (the default pool when the task
is missing or None), through the inference path of the stage (ICLRunner: template, instruction, greedy decoding,
stop tokens, post-processing).

Base model identity: when the base model directory matches a registered version (`lmmops-base`), the name and
version are the registry's; otherwise the name is the configured path and the version "sha:<fingerprint>" of the
weights and tokenizer (`lmmops.vectors.train.model_fingerprint`), which a loader recomputes from what it loaded.

Run: `python -m pytest tests/vectors/test_stages.py -q`.

Departures from the references: they ship one bare state dict per dataset; here a bundle carries every task's
vectors with the base model reference and the teacher (strategy, shots) they were distilled from.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from lmmops.data.schemas import VQAItem
from lmmops.icl.inference import ICLRunner
from lmmops.vectors.base import VectorSet
from lmmops.vectors.files import load_vectors, replacing_directory, save_vectors
from lmmops.vectors.train import attached, model_fingerprint

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_POOL = "vqa"


def pool_dirname(pool: str) -> str:
    """A file-system name for a pool ("icl/colour/en" -> "icl-colour-en")."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", pool).strip("-") or "pool"


def pool_dirnames(pools: Iterable[str]) -> dict[str, str]:
    """{pool: its file-system name}; two pools that would share a name are an error."""
    names = {pool: pool_dirname(pool) for pool in pools}
    if len(set(names.values())) != len(names):
        raise ValueError(f"pool names collide as file names: {names}")
    return names


def fingerprint_version(model: nn.Module, processor: Any) -> str:
    """The version string of an unregistered base model: "sha:" + 16 hex digits of its weights and tokenizer."""

    return "sha:" + model_fingerprint(model, processor)[:16]


@dataclass(frozen=True)
class BaseModelRef:
    """Which base model vectors belong to: a registered `name` + `version`, or a path + "sha:<fingerprint>"."""

    name: str
    version: str
    registered: bool
    path: str = ""  # where the stage loaded it from (informational)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "registered": self.registered, "path": self.path}


def save_bundle(
    directory: str | Path,
    vectors: Mapping[str, VectorSet],
    model: nn.Module,
    *,
    method: str,
    base: BaseModelRef,
    shots: int,
    val_acc: Mapping[str, float],
    steps: Mapping[str, int] | None = None,
    train_items: Mapping[str, int] | None = None,
    instruction: str | None = None,
    max_new_tokens: int = 8,
    teacher_strategy: str = "RS-within-task",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write every pool's vectors and the manifest to `directory` (replacing it whole); returns the directory."""
    if not vectors:
        raise ValueError("a vector bundle needs at least one pool")
    names = pool_dirnames(vectors)
    with replacing_directory(out := Path(directory)) as tmp:
        pools: dict[str, dict[str, Any]] = {}
        for pool, vs in vectors.items():
            if vs.method != method:
                raise ValueError(f"pool {pool!r} holds {vs.method} vectors, the bundle is {method}")
            rel = f"pools/{names[pool]}"
            save_vectors(tmp / rel, vs, model, base_model=base.name, base_model_version=base.version,
                         extra={"pool": pool, "teacher_strategy": teacher_strategy, "shots": shots})
            pools[pool] = {"path": rel, "val_acc": float(val_acc[pool]), "step": int((steps or {}).get(pool, 0)),
                           "train_items": int((train_items or {}).get(pool, 0))}
        default = DEFAULT_POOL if DEFAULT_POOL in pools else next(iter(pools))
        manifest = {
            "format": BUNDLE_FORMAT,
            "method": method,
            "pools": pools,
            "default_pool": default,
            "base_model": base.as_dict(),
            "teacher": {"strategy": teacher_strategy, "shots": shots},
            "val_acc_mean": sum(p["val_acc"] for p in pools.values()) / len(pools),
            "num_parameters": next(iter(vectors.values())).num_parameters(),
            "instruction": instruction,
            "max_new_tokens": max_new_tokens,
            "extra": extra or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # pools in training order
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no vector bundle at {directory} (missing {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: bundle format {manifest.get('format')!r}, this lmmops reads {BUNDLE_FORMAT}")
    return manifest


def _image(value: Any) -> Image.Image:
    """A PIL image from a path (str / Path), raw bytes, or a PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, bytes | bytearray | memoryview):
        with Image.open(io.BytesIO(bytes(value))) as im:
            return im.convert("RGB")
    if isinstance(value, str | Path):
        with Image.open(value) as im:
            return im.convert("RGB")
    raise TypeError(f"an image is a path, bytes or a PIL image, got {type(value).__name__}")


class VectorBundle:
    """A loaded bundle: the base model, its processor and one vector set per pool."""

    def __init__(self, manifest: dict[str, Any], vectors: dict[str, VectorSet], model: nn.Module, processor: Any):
        self.manifest, self.vectors, self.model, self.processor = manifest, vectors, model, processor

    @property
    def pools(self) -> list[str]:
        return list(self.vectors)

    @property
    def default_pool(self) -> str:
        return str(self.manifest["default_pool"])

    def pool_for(self, task: Any) -> str:
        if task is None or (isinstance(task, float) and task != task) or task == "":  # None / NaN / "": default
            return self.default_pool
        if task not in self.vectors:
            raise ValueError(f"unknown task {task!r}; this {self.manifest['method']} bundle has: "
                             f"{', '.join(self.pools)}")
        return str(task)

    def answer(self, images: Sequence[Any], questions: Sequence[str], tasks: Sequence[Any] | None = None, *,
               batch_size: int = 32) -> list[str]:
        """Short answers to (image, question) pairs, each with its task's vectors (default pool when no task)."""

        if len(images) != len(questions) or (tasks is not None and len(tasks) != len(questions)):
            raise ValueError(f"images ({len(images)}), questions ({len(questions)}) and tasks "
                             f"({'-' if tasks is None else len(tasks)}) must have the same length")
        pools = [self.pool_for(t) for t in (tasks if tasks is not None else [None] * len(questions))]
        answers = [""] * len(questions)
        runner = ICLRunner(self.model, self.processor, batch_size=batch_size,
                           max_new_tokens=int(self.manifest.get("max_new_tokens") or 8), progress=False)
        device = next(self.model.parameters()).device
        with tempfile.TemporaryDirectory(prefix="lmmops-answer-") as tmp:
            # ICLRunner reads queries as VQAItems with image files: write each input image once.
            items = []
            for i, (image, question) in enumerate(zip(images, questions, strict=True)):
                path = Path(tmp) / f"{i}.png"
                _image(image).save(path)
                items.append(VQAItem(question_id=i, image_id=i, question=str(question), question_type="",
                                     answer_type="", multiple_choice_answer="", answers=(), image_path=path,
                                     split="inference"))
            for pool in dict.fromkeys(pools):
                rows = [i for i, p in enumerate(pools) if p == pool]
                vectors = self.vectors[pool].to(device)
                with attached(self.model, vectors, runner.adapter):
                    predicted = runner.predict([([], items[i]) for i in rows],
                                               instruction=self.manifest.get("instruction"), desc=pool)
                for i, a in zip(rows, predicted, strict=True):
                    answers[i] = a
        return answers


def load_bundle(
    directory: str | Path, model: nn.Module, processor: Any, *, base_model: str, base_model_version: str
) -> VectorBundle:
    """Every pool's vectors of the bundle at `directory`, checked against the base model the caller loaded.

    `base_model` / `base_model_version` name what `model` is (the registered name and version it was loaded from,
    or the bundle's recorded path and `fingerprint_version(model, processor)`); a vector file trained for another
    base model fails with VectorMismatchError naming both."""
    manifest = read_manifest(directory)
    vectors = {pool: load_vectors(Path(directory) / entry["path"], model, base_model=base_model,
                                  base_model_version=base_model_version)
               for pool, entry in manifest["pools"].items()}
    return VectorBundle(manifest, vectors, model, processor)
