"""A faiss inner-product index over unit vectors (cosine similarity), with a manifest that ties it to
the embedder and the data version it was built from.

    from lmmops.icl.index import VectorIndex, check_compatible, read_manifest, StaleIndexError
    index = VectorIndex.build(vectors, ids, kind="flat", embedder_name=emb.name, data_version=md5)
    scores, found = index.search(queries, k=32)        # (Q, k) float32, (Q, k) int64 ids (-1: none)
    index.save(Path("artifacts/index/image"))
    index = VectorIndex.load(Path("artifacts/index/image"), embedder_name=emb.name, data_version=md5)

Kinds:
- "flat" (default): IndexFlatIP, exact.
- "ivf": IndexIVFFlat with inner product, for large support sets. nlist defaults to ~4*sqrt(N); the
  coarse quantiser is trained on a random sample (at most 40*nlist vectors). When `nprobe` is not given
  it is calibrated at build time: the smallest power of two (then refined by bisection) whose recall@32
  against exact search on a sample of the indexed vectors (each used as a query, itself left out) is
  at least `target_recall` (0.96: a margin over the 0.95 goal, since new queries are not the sample
  it was tuned on). The measured calibration recall is kept in the manifest.
- "pq": product-quantisation fast scan with exact re-ranking (IndexPQFastScan, 4-bit codes, one
  sub-quantiser per `pq_dims` (2) dimensions, wrapped in IndexRefineFlat): the codes are scanned with SIMD
  look-up tables, then the best `k_factor * k` candidates are re-scored exactly. Unlike IVF it does not
  depend on cluster structure, so it also holds on unstructured (random) embeddings; `k_factor` is
  calibrated at build time like IVF's nprobe (smallest value reaching `target_recall`). Memory: the
  float vectors are kept for the re-ranking (plus d/2/2 bytes of codes per vector).

Files in the index directory: `index.faiss`, `ids.npy`, `manifest.json`. Each is written to a temporary
file in the same directory and renamed into place; the manifest is written last and carries the
SHA-256 of the other two, so a half-written or mismatched directory is refused on load.

Run: `python -m pytest tests/icl/test_index.py -q`.

Departures from the reference: it keeps a flat L2 index with no record of what built it; here a stale
index (another embedder, another data version) raises StaleIndexError instead of silently serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# faiss's loader logs at INFO a ModuleNotFoundError for its optional per-ISA module before it loads the one
# that dispatches at run time (compiled with "DD AVX2"): a message that reads as a failure in every stage log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402
import numpy as np  # noqa: E402

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "pq")


class StaleIndexError(ValueError):
    """An index built by another embedder or from another data version than the caller expects."""


@dataclass(frozen=True)
class IndexManifest:
    embedder: str
    dim: int
    count: int
    kind: str
    data_version: str
    params: dict[str, Any] = field(default_factory=dict)
    metric: str = "inner_product"
    format: int = FORMAT_VERSION
    faiss_version: str = faiss.__version__
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> digest, filled by save()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexManifest:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def default_nlist(n: int) -> int:
    """~4*sqrt(N) lists, at least 1 and at most N/39 (faiss wants >= 39 training points per centroid)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39 or 1))


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {x.shape}")
    return x


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product with numpy (the reference point for recall), sorted by score descending."""
    vectors, queries = _as_matrix(vectors, "vectors"), _as_matrix(queries, "queries")
    k = min(k, len(vectors))
    scores = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), chunk):
        sims = queries[s : s + chunk] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows[s : s + chunk] = np.take_along_axis(top, order, axis=1)
        scores[s : s + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return scores, rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (rows of ids; -1 entries never match)."""
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Write via `write(tmp_path)` to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: Path) -> IndexManifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no index manifest at {path} (was the index saved completely?)")
    return IndexManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))


def check_compatible(manifest: IndexManifest, *, embedder_name: str, data_version: str) -> None:
    """Raise StaleIndexError naming what differs (expected vs found) when the index was built by another
    embedder or from another data version."""
    problems = []
    if manifest.embedder != embedder_name:
        problems.append(f"embedder differs (expected {embedder_name!r}, found {manifest.embedder!r})")
    if manifest.data_version != data_version:
        problems.append(f"data version differs (expected {data_version!r}, found {manifest.data_version!r})")
    if problems:
        raise StaleIndexError("stale index: " + "; ".join(problems) + "; rebuild it (lmmops index)")


class VectorIndex:
    """A faiss inner-product index whose search returns the caller's ids. Build with `build`, not __init__."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, manifest: IndexManifest):
        self.index, self.ids, self.manifest = index, np.asarray(ids, dtype=np.int64), manifest

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray | list[int] | None = None,
        *,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        embedder_name: str = "",
        data_version: str = "",
        target_recall: float = 0.96,
        calibration_queries: int = 200,
        seed: int = 0,
        k_factor: int | None = None,
        pq_dims: int = 2,
    ) -> VectorIndex:
        """Index unit `vectors` (n, dim) under integer `ids` (default 0..n-1); see the module docstring."""
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; kinds: {', '.join(KINDS)}")
        vectors = _as_matrix(vectors, "vectors")
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("cannot build an index over 0 vectors")
        ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids_arr.shape != (n,):
            raise ValueError(f"ids must have one entry per vector ({n}), got shape {ids_arr.shape}")
        params: dict[str, Any] = {}
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
            index.add(vectors)
        elif kind == "pq":
            if dim % pq_dims:
                raise ValueError(f"pq: dim {dim} is not a multiple of pq_dims {pq_dims}")
            rng = np.random.default_rng(seed)
            n_train = min(n, 20_000)  # 16 centroids per sub-quantiser need few points
            sample = vectors[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else vectors
            codes = faiss.IndexPQFastScan(dim, dim // pq_dims, 4, faiss.METRIC_INNER_PRODUCT)
            codes.train(sample)
            index = faiss.IndexRefineFlat(codes)
            index.add(vectors)
            params = {"pq_dims": pq_dims, "nbits": 4, "train_size": n_train, "seed": seed}
            if k_factor is None:
                k_factor, recall = _calibrate_k_factor(index, vectors, target_recall, calibration_queries, rng)
                params.update(k_factor_calibrated=True, calibration_recall_at_32=round(recall, 4),
                              target_recall=target_recall)
            index.k_factor = float(k_factor)
            params["k_factor"] = int(k_factor)
        else:
            nlist = nlist or default_nlist(n)
            if nlist > n:
                raise ValueError(f"nlist {nlist} exceeds the number of vectors {n}")
            rng = np.random.default_rng(seed)
            n_train = min(n, 40 * nlist)
            sample = vectors[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else vectors
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed  # deterministic k-means
            index.train(sample)
            index.add(vectors)
            params = {"nlist": nlist, "train_size": n_train, "seed": seed}
            if nprobe is None:
                nprobe, recall = _calibrate_nprobe(index, vectors, target_recall, calibration_queries, rng)
                params.update(nprobe_calibrated=True, calibration_recall_at_32=round(recall, 4),
                              target_recall=target_recall)
            index.nprobe = int(nprobe)
            params["nprobe"] = int(nprobe)
        manifest = IndexManifest(embedder=embedder_name, dim=dim, count=n, kind=kind, data_version=data_version,
                                 params=params)
        return cls(index, ids_arr, manifest)

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product, best first: (scores (Q, k) float32, ids (Q, k) int64, -1 where an
        approximate index found fewer than k). `nprobe` overrides the stored one for this call (ivf)."""
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]}, the index has dim {self.dim}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in 1..{len(self)} (the index size), got {k}")
        if nprobe is not None and self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(nprobe))
            scores, rows = self.index.search(queries, k, params=params)
        else:
            scores, rows = self.index.search(queries, k)
        found = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        return scores, found

    def reconstruct_all(self) -> np.ndarray:
        """The stored vectors, in insertion order (flat: a view-free copy; ivf: reconstructed per list)."""
        if self.kind == "ivf":
            self.index.make_direct_map()
        return self.index.reconstruct_n(0, len(self))

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)  # the old manifest must not vouch for new files
        _atomic_write(directory / INDEX_FILE, lambda p: faiss.write_index(self.index, str(p)))

        def write_ids(p: Path) -> None:
            with p.open("wb") as f:
                np.save(f, self.ids)

        _atomic_write(directory / IDS_FILE, write_ids)
        sums = {name: _sha256(directory / name) for name in (INDEX_FILE, IDS_FILE)}
        manifest = IndexManifest(**{**asdict(self.manifest), "sha256": sums})
        text = json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"
        _atomic_write(directory / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))
        self.manifest = manifest
        return directory

    @classmethod
    def load(cls, directory: Path, *, embedder_name: str | None = None, data_version: str | None = None,
             verify: bool = True) -> VectorIndex:
        """Load a saved index. With `embedder_name` and `data_version` given, a mismatch raises
        StaleIndexError; with `verify`, files that do not match the manifest's checksums raise ValueError."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if embedder_name is not None or data_version is not None:
            check_compatible(
                manifest,
                embedder_name=manifest.embedder if embedder_name is None else embedder_name,
                data_version=manifest.data_version if data_version is None else data_version,
            )
        if verify:
            for name, digest in manifest.sha256.items():
                if _sha256(directory / name) != digest:
                    raise ValueError(f"{directory / name} does not match its manifest checksum; rebuild the index")
        index = faiss.read_index(str(directory / INDEX_FILE))
        ids = np.load(directory / IDS_FILE)
        if index.ntotal != manifest.count or index.d != manifest.dim or len(ids) != manifest.count:
            raise ValueError(f"{directory}: index holds {index.ntotal}x{index.d}, manifest says "
                             f"{manifest.count}x{manifest.dim}")
        if manifest.kind == "ivf":
            index.nprobe = int(manifest.params["nprobe"])
        if manifest.kind == "pq":
            index.k_factor = float(manifest.params["k_factor"])
        return cls(index, ids, manifest)


def _calibrate(index: faiss.Index, vectors: np.ndarray, target: float, n_queries: int, rng: np.random.Generator,
               params: Any, limit: int, k: int = 32) -> tuple[int, float]:
    """Smallest value v in 1..limit of a search knob (`params(v)` -> faiss search parameters) whose
    recall@k on held-in sample queries (each a support vector, itself excluded on both sides) reaches
    `target`: doubling, then bisection. Returns (v, its recall); `limit` when none reaches it."""
    n = len(vectors)
    k = min(k, n - 1)
    if k < 1:
        return limit, 1.0
    rows = rng.choice(n, min(n_queries, n), replace=False)
    queries = vectors[rows]
    _, truth = exact_search(vectors, queries, k + 1)
    truth = np.array([[t for t in row if t != r][:k] for row, r in zip(truth, rows, strict=True)])

    def recall(value: int) -> float:
        _, found = index.search(queries, k + 1, params=params(value))
        found = np.array([[f for f in row if f != r][:k] for row, r in zip(found, rows, strict=True)])
        return recall_at_k(found, truth)

    lo, hi = 0, 1  # invariant: recall(hi) >= target or hi == limit; lo fails (0 = never tried)
    while hi < limit and recall(hi) < target:
        lo, hi = hi, min(2 * hi, limit)
    while hi - lo > 1 and lo > 0:
        mid = (lo + hi) // 2
        if recall(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, recall(hi)


def _calibrate_nprobe(index: faiss.IndexIVFFlat, vectors: np.ndarray, target: float, n_queries: int,
                      rng: np.random.Generator) -> tuple[int, float]:
    """Smallest nprobe with recall@32 >= target (see `_calibrate`)."""
    return _calibrate(index, vectors, target, n_queries, rng,
                      lambda v: faiss.SearchParametersIVF(nprobe=v), limit=index.nlist)


def _calibrate_k_factor(index: faiss.IndexRefineFlat, vectors: np.ndarray, target: float, n_queries: int,
                        rng: np.random.Generator, limit: int = 256) -> tuple[int, float]:
    """Smallest re-ranking factor with recall@32 >= target (see `_calibrate`)."""
    return _calibrate(index, vectors, target, n_queries, rng,
                      lambda v: faiss.IndexRefineSearchParameters(k_factor=float(v)), limit=limit)
