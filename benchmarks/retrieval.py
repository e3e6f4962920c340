"""Benchmark of the demonstration index (lmmops.icl.index): top-32 query throughput and recall@32 against
exact numpy search, at the VQAv2 train size.

Run: .venv/bin/python benchmarks/retrieval.py [--n 443757] [--dims 384 512] [--queries 1000] [--k 32]
                                             [--data random clustered] [--repeats 5]
                                             [--kinds flat ivf pq]

For each data set and dimension it builds a support matrix of `--n` unit vectors and `--queries` fresh
query vectors (not in the support set), then prints one row per method:
- exact:  numpy (BLAS matmul + argpartition, 256 queries per chunk): the reference and the recall truth;
- flat:   faiss IndexFlatIP (exact; recall 1 up to ties);
- ivf:    faiss IndexIVFFlat (inner product), nlist = 4*sqrt(N), trained on 40*nlist sampled vectors,
          nprobe calibrated at build time for recall@32 >= 0.96 on a sample of the support vectors;
- pq:     faiss IndexPQFastScan (4-bit codes, one sub-quantiser per 2 dimensions) + exact re-ranking of
          the best k_factor*32 (IndexRefineFlat), k_factor calibrated at build time the same way. It does
          not rely on cluster structure, so it is the approximate index that holds on random vectors.
Columns: build seconds (ivf: training + adding + nprobe calibration), queries per second (best and median of
`--repeats` rounds, all queries in one call; the methods take turns within each round), recall@32 against
exact, speed-up in throughput over exact (numpy; best over best, median over median, then "paired": the
median over rounds of each round's exact time / method time, the least sensitive to a slow spell of the
shared machine, since the two timings it divides were taken seconds apart),
and "vs flat": the speed-up over faiss's exact IndexFlatIP (when `flat` is among the kinds), which is
itself 2-3x faster than numpy on this machine, so it is the stricter baseline.

Data sets:
- random:    i.i.d. Gaussian directions. The hardest case for IVF: no cluster structure, every query's
             neighbours are spread over many lists, so high recall needs a large nprobe;
- clustered: a Gaussian mixture (2,000 components, unit-norm centres, noise of norm ~0.6 around each),
             closer to real embeddings, which cluster by topic/answer type. Labelled as such.
Memory: 443,757 x 512 float32 is ~0.9 GB (plus the same again briefly while normalising).
Timings depend on the machine (2 shared CPU cores when written).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from lmmops.icl.index import VectorIndex, default_nlist, exact_search, recall_at_k

VQAV2_TRAIN = 443_757


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(kind: str, n: int, n_queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        vectors = unit_rows(rng.standard_normal((n, dim), dtype=np.float32))
        queries = unit_rows(rng.standard_normal((n_queries, dim), dtype=np.float32))
        return vectors, queries
    if kind != "clustered":
        raise ValueError(f"unknown data kind {kind!r}; kinds: random, clustered")
    centres = unit_rows(rng.standard_normal((2000, dim), dtype=np.float32))
    sigma = np.float32(0.6 / np.sqrt(dim))  # noise of norm ~0.6 around unit centres

    def draw(m: int) -> np.ndarray:
        out = rng.standard_normal((m, dim), dtype=np.float32)
        out *= sigma
        out += centres[rng.integers(0, len(centres), m)]
        return unit_rows(out)

    return draw(n), draw(n_queries)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=VQAV2_TRAIN)
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 512])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--data", nargs="+", default=["random", "clustered"])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method (best and median shown)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "pq"], help="index kinds to compare with exact")
    args = ap.parse_args()

    print(f"N={args.n:,} support vectors, {args.queries:,} queries, top-{args.k}, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, nlist(ivf)={default_nlist(args.n)}")
    header = f"{'data':<10} {'index':<6} {'dim':>4} {'build s':>8} {'queries/s':>10} {'median':>8} " \
             f"{'recall@32':>9} {'speed-up':>8} {'median':>7} {'paired':>7} {'vs flat':>7}  params"
    print(header)
    print("-" * len(header))
    for data in args.data:
        for dim in args.dims:
            for row in bench_one(data, dim, args):
                print(row, flush=True)


def bench_one(data: str, dim: int, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Yield the printed rows (exact, then each index kind) for one data set and dimension.

    Every index is built first, then the methods are timed in rounds (exact, flat, ivf, pq, exact, ...), so
    that a slow spell of the shared machine hits all of them alike instead of one method's whole series."""
    vectors, queries = make_data(data, args.n, args.queries, dim, args.seed)
    truth = exact_search(vectors, queries, args.k)[1]
    kinds = sorted(args.kinds, key=lambda kd: kd != "flat")
    indexes: dict[str, VectorIndex] = {}
    build_s: dict[str, float] = {"exact": 0.0}
    found: dict[str, np.ndarray] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        indexes[kind] = VectorIndex.build(vectors, kind=kind, seed=args.seed)
        build_s[kind] = time.perf_counter() - t0
    searches = {"exact": lambda: exact_search(vectors, queries, args.k)}
    for kind in kinds:
        def search(index: VectorIndex = indexes[kind], kind: str = kind) -> None:
            found[kind] = index.search(queries, args.k)[1]
        searches[kind] = search
    times: dict[str, list[float]] = {name: [] for name in searches}
    for _ in range(args.repeats):
        for name, search in searches.items():
            times[name].append(timed(search))
    best = {name: min(ts) for name, ts in times.items()}
    median = {name: float(np.median(ts)) for name, ts in times.items()}
    paired = {name: float(np.median(np.array(times["exact"]) / np.array(ts))) for name, ts in times.items()}
    for name in searches:
        recall = 1.0 if name == "exact" else recall_at_k(found[name], truth)
        params = {} if name == "exact" else {
            k: v for k, v in indexes[name].manifest.params.items() if k in ("nlist", "nprobe", "k_factor")}
        vs_flat = f"{best['flat'] / best[name]:>6.1f}x" if "flat" in best and name != "exact" else f"{'':>7}"
        yield (f"{data:<10} {name:<6} {dim:>4} {build_s[name]:>8.1f} {args.queries / best[name]:>10,.0f} "
               f"{args.queries / median[name]:>8,.0f} {recall:>9.3f} {best['exact'] / best[name]:>7.1f}x "
               f"{median['exact'] / median[name]:>6.1f}x {paired[name]:>6.1f}x {vs_flat}  "
               f"{params or ('numpy' if name == 'exact' else '')}")


if __name__ == "__main__":
    main()
