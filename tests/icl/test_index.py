"""VectorIndex: exact search, save/load round trip, stale manifests, IVF recall at small scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmmops.icl.index import (
    StaleIndexError,
    VectorIndex,
    check_compatible,
    default_nlist,
    exact_search,
    read_manifest,
    recall_at_k,
)

torch.set_num_threads(1)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_search_is_exact_and_returns_caller_ids() -> None:
    vectors, queries = unit_vectors(500, 16, 0), unit_vectors(20, 16, 1)
    ids = np.arange(500) * 10 + 7
    index = VectorIndex.build(vectors, ids, embedder_name="e", data_version="v")
    scores, found = index.search(queries, 5)
    ref_scores, ref_rows = exact_search(vectors, queries, 5)
    np.testing.assert_array_equal(found, ids[ref_rows])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(scores[:, 0], (queries @ vectors.T).max(1), atol=1e-5)


def test_build_and_search_reject_bad_arguments() -> None:
    vectors = unit_vectors(50, 8, 0)
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        VectorIndex.build(vectors, kind="hnsw")
    with pytest.raises(ValueError, match="one entry per vector"):
        VectorIndex.build(vectors, np.arange(3))
    index = VectorIndex.build(vectors)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.50"):
        index.search(vectors[:1], 51)
    with pytest.raises(ValueError, match="dim 4"):
        index.search(np.zeros((1, 4), np.float32), 1)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    vectors, queries = unit_vectors(2000, 16, 0), unit_vectors(10, 16, 1)
    index = VectorIndex.build(vectors, np.arange(2000) + 100, kind=kind, embedder_name="minilm-l6-v2",
                              data_version="md5:abc")
    before = index.search(queries, 8)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.npy", "index.faiss", "manifest.json"]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["embedder"] == "minilm-l6-v2" and manifest["data_version"] == "md5:abc"
    assert (manifest["dim"], manifest["count"], manifest["kind"]) == (16, 2000, kind)
    if kind == "ivf":
        assert manifest["params"]["nlist"] == default_nlist(2000) and manifest["params"]["nprobe"] >= 1
    loaded = VectorIndex.load(tmp_path / "idx", embedder_name="minilm-l6-v2", data_version="md5:abc")
    after = loaded.search(queries, 8)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    assert loaded.manifest.params == index.manifest.params


def test_stale_manifest_names_what_differs(tmp_path: Path) -> None:
    VectorIndex.build(unit_vectors(20, 4, 0), embedder_name="pixels-v1", data_version="v1").save(tmp_path)
    manifest = read_manifest(tmp_path)
    check_compatible(manifest, embedder_name="pixels-v1", data_version="v1")  # no error
    with pytest.raises(StaleIndexError, match=r"embedder differs \(expected 'minilm-l6-v2', found 'pixels-v1'\)"):
        check_compatible(manifest, embedder_name="minilm-l6-v2", data_version="v1")
    with pytest.raises(StaleIndexError, match=r"data version differs \(expected 'v2', found 'v1'\)") as err:
        VectorIndex.load(tmp_path, embedder_name="pixels-v1", data_version="v2")
    assert "embedder" not in str(err.value)


def test_load_refuses_files_that_do_not_match_the_manifest(tmp_path: Path) -> None:
    VectorIndex.build(unit_vectors(20, 4, 0)).save(tmp_path / "a")
    VectorIndex.build(unit_vectors(30, 4, 1)).save(tmp_path / "b")
    (tmp_path / "a" / "index.faiss").write_bytes((tmp_path / "b" / "index.faiss").read_bytes())
    with pytest.raises(ValueError, match="checksum"):
        VectorIndex.load(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="manifest"):
        VectorIndex.load(tmp_path / "missing")


def test_ivf_recall_at_32_on_20k_random_unit_vectors() -> None:
    vectors, queries = unit_vectors(20_000, 32, 0), unit_vectors(200, 32, 1)
    index = VectorIndex.build(vectors, kind="ivf")
    assert index.manifest.params["nlist"] == default_nlist(20_000) == 512  # 4*sqrt(N)=566, capped at N//39
    _, truth = exact_search(vectors, queries, 32)
    _, found = index.search(queries, 32)
    recall = recall_at_k(found, truth)
    assert recall >= 0.95, (recall, index.manifest.params)
    assert index.manifest.params["nprobe"] < index.manifest.params["nlist"]  # approximate, not exhaustive


def test_pq_recall_at_32_on_random_unit_vectors_and_round_trip(tmp_path: Path) -> None:
    vectors, queries = unit_vectors(20_000, 64, 0), unit_vectors(200, 64, 1)
    index = VectorIndex.build(vectors, kind="pq", embedder_name="e", data_version="v")
    params = index.manifest.params
    assert params["calibration_recall_at_32"] >= 0.96 and 1 <= params["k_factor"] <= 256
    _, truth = exact_search(vectors, queries, 32)
    _, found = index.search(queries, 32)
    assert recall_at_k(found, truth) >= 0.95, (recall_at_k(found, truth), params)
    np.testing.assert_array_equal(index.reconstruct_all(), vectors)  # the re-ranking keeps exact vectors
    loaded = VectorIndex.load(index.save(tmp_path / "pq"), embedder_name="e", data_version="v")
    np.testing.assert_array_equal(loaded.search(queries, 32)[1], found)
    with pytest.raises(ValueError, match="not a multiple"):
        VectorIndex.build(unit_vectors(100, 9, 0), kind="pq")


def test_recall_at_k_counts_set_overlap() -> None:
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[2, 3, 1]])) == pytest.approx(2 / 3)
