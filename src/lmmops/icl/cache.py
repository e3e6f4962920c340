"""The demo feature cache: the base model's image features for every support image, computed once by the
`index` stage, so that ICL inference runs the vision encoder on query images only.

    from lmmops.icl.cache import DemoFeatureCache, image_key
    cache = DemoFeatureCache.build(embedder, support_images, data_version=md5)   # ModelImageEmbedder
    cache.save(Path("models/index/demo_features"))
    cache = DemoFeatureCache.load(dir, model_fingerprint=embedder.name, data_version=md5)
    cache.get(image_key(item.image_path))     # (image tokens, hidden) float32 tensor, or None

What is stored: per support image (keyed by its file name, which is unique in the VQAv2/COCO layout), the
embeddings the language model reads at that image's image tokens (`adapter.image_features`: vision tower
+ projector/connector), in `features.safetensors`, with `manifest.json` naming the model fingerprint (the
`ModelImageEmbedder.name`), the data version, the count and the SHA-256 of the tensor file. A cache built
by another model or from another data version raises StaleIndexError on load (the same rule as the
vector indexes); files are written to a temporary name and renamed, the manifest last.

Why per image and not per prompt: demonstrations recur across queries, strategies and shot counts, so
each support image's features are computed once and reused by every ICL prompt that shows it.

Run: `python -m pytest tests/icl/test_icl_eval.py -q`.

Departure from the reference: the reference code re-encodes every demonstration image in every prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmmops.icl.index import StaleIndexError, _sha256

MANIFEST = "manifest.json"
FEATURES_FILE = "features.safetensors"


def image_key(path: Path | str) -> str:
    """The cache key of an image file: its file name (COCO names carry the split and the image id)."""
    return Path(path).name


@dataclass(frozen=True)
class CacheManifest:
    model: str  # the ModelImageEmbedder name: family + fingerprint of the weights
    data_version: str
    count: int
    hidden: int
    sha256: dict[str, str] = field(default_factory=dict)


class DemoFeatureCache:
    """Image file name -> (image tokens, hidden) features, tied to one model and one data version."""

    def __init__(self, features: dict[str, torch.Tensor], manifest: CacheManifest):
        self.features, self.manifest = features, manifest

    def __len__(self) -> int:
        return len(self.features)

    def __contains__(self, key: str) -> bool:
        return key in self.features

    def get(self, key: str) -> torch.Tensor | None:
        return self.features.get(key)

    @classmethod
    def build(cls, embedder: Any, images: Sequence[Path], *, data_version: str) -> DemoFeatureCache:
        """Features of each distinct image in `images` with `embedder` (a ModelImageEmbedder)."""
        unique = sorted({image_key(p): Path(p) for p in images}.items())
        feats = embedder.features([p for _, p in unique], desc="demo feature cache")
        features = {key: f.float().contiguous() for (key, _), f in zip(unique, feats, strict=True)}
        hidden = int(next(iter(features.values())).shape[-1]) if features else 0
        return cls(features, CacheManifest(embedder.name, data_version, len(features), hidden))

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)  # the old manifest must not vouch for new files
        tmp = directory / f".{FEATURES_FILE}.tmp-{os.getpid()}"
        save_file(self.features, str(tmp), metadata={"model": self.manifest.model})
        tmp.replace(directory / FEATURES_FILE)
        digest = _sha256(directory / FEATURES_FILE)
        manifest = CacheManifest(**{**asdict(self.manifest), "sha256": {FEATURES_FILE: digest}})
        tmp = directory / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(directory / MANIFEST)
        self.manifest = manifest
        return directory

    @classmethod
    def load(cls, directory: Path, *, model_fingerprint: str | None = None,
             data_version: str | None = None) -> DemoFeatureCache:
        """Load a saved cache; another model or data version than the given ones raises StaleIndexError."""
        directory = Path(directory)
        path = directory / MANIFEST
        try:
            manifest = CacheManifest(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"no demo feature cache at {directory} (missing {MANIFEST}); "
                                    f"run `lmmops index`") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a demo feature cache manifest: {err}") from err
        problems = []
        if model_fingerprint is not None and manifest.model != model_fingerprint:
            problems.append(f"model differs (expected {model_fingerprint!r}, found {manifest.model!r})")
        if data_version is not None and manifest.data_version != data_version:
            problems.append(f"data version differs (expected {data_version!r}, found {manifest.data_version!r})")
        if problems:
            raise StaleIndexError(f"stale demo feature cache {directory}: " + "; ".join(problems)
                                  + "; rebuild it (lmmops index)")
        digest = manifest.sha256.get(FEATURES_FILE)
        if digest != _sha256(directory / FEATURES_FILE):
            raise ValueError(f"{directory / FEATURES_FILE} does not match its manifest checksum; rebuild it")
        return cls(load_file(str(directory / FEATURES_FILE)), manifest)
