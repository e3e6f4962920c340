"""Demonstration retrieval strategies over a support set (docs/methods.md §1): which k support items to show
before each query.

    from lmmops.icl.retrieval import Retriever, STRATEGIES, retrieve, demos_for
    r = Retriever(support, text_embedder=TextEmbedder(), image_embedder=PixelImageEmbedder())
    rows = r.retrieve("SQ", queries, k=4, seed=0)          # list (per query) of support row indices
    demos = demos_for(rows, support)                       # the same as VQAItems
    rows = retrieve("RS", queries, support, k=4, seed=0)   # one-shot helper (builds a Retriever)

Strategies (`STRATEGIES[name]` describes each; names are exact):
  zero-shot   no demonstrations (k is ignored);
  RS          uniform random without replacement, seeded per (seed, query question_id): the same query
              gets the same demos whatever batch it is in;
  SI          query image vs candidate images (cosine, image embedder);
  SQ          query question vs candidate questions (cosine, text embedder);
  SQA         "question answer" text of the query with ITS GROUND-TRUTH answer (multiple_choice_answer)
              vs the same text of each candidate: an ORACLE (`STRATEGIES["SQA"].oracle is True`), an
              analysis tool, never a deployable strategy;
  SQA-pseudo  SQA with the query's answer replaced by an earlier prediction (`predictions={qid: text}`);
  SI->Q       top-`rerank_depth` (32) by image, re-ranked by question similarity; SQ->I the reverse.
              When k > 32 the first stage keeps k candidates (so the re-rank only reorders);
  I->SQ       cross-modal: query image vs candidate "question answer" text;
  Q->SI       cross-modal: query question vs candidate images.
              Both need ONE shared image-text space: the image embedder must be a JointEmbedder (e.g.
              ClipEmbedder, the reference's CLIP). With separate embedders (MiniLM + pixels or an LMM's
              vision tower) there is no meaningful image-text cosine, so they raise ValueError rather
              than return numbers that only look like a ranking;
  mixed       SI and SQ rankings interleaved (SI1, SQ1, SI2, SQ2, ...), duplicates dropped, first k kept
              (so about half each; exactly half when the two rankings do not overlap).

Ordering convention (all similarity strategies): demonstrations are returned in PROMPT ORDER, least
similar first and MOST SIMILAR LAST, i.e. the best demonstration sits right before the query. For the
re-ranking strategies "similar" means the second-stage score; for mixed, the interleaved rank (so the
two top-1 items are the last two). RS keeps its random draw order. `manipulations.reverse_order` flips it.

Self-exclusion (on by default, `exclude_self`): a query is never its own demonstration: support items
with the query's question_id are dropped for every strategy, and, for strategies that look at images
(SI, SI->Q, SQ->I, I->SQ, Q->SI, mixed), when the query comes from the support set, so are support items
with the query's image_id (VQAv2 asks ~5 questions per image; the same picture would trivially rank first).

Pools (`PooledRetriever`): a support set that mixes several tasks (the synthetic VQA: nine ICL task
families and ordinary questions) is searched per pool, so each query's demonstrations come from its own
task, as when each task is its own dataset (VQAv2, OK-VQA) in the papers. Pool vectors are slices of the
whole support set's (e.g. loaded from the saved indexes); row numbers returned are the whole support's.

Validation happens before any embedding or search: an unknown strategy, k < 0, k larger than the
support set, a missing embedder, a cross-modal strategy without a joint space, or SQA-pseudo without a
prediction for every query raise ValueError naming the problem.

Run: `python -m pytest tests/icl/test_retrieval.py -q`.

Departures from the reference code: its mixed score is sorted in the wrong direction (it put the least
similar demos first by the combined score while the other strategies put the most similar first); here
every strategy follows the one convention above, and tests check it. Query images are never blurred (the
reference blurs them by default). Questions use MiniLM rather than CLIP text (see embedders).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmops.data.schemas import VQAItem
from lmmops.icl.embedders import ImageEmbedder, TextEmbedder
from lmmops.icl.index import StaleIndexError, VectorIndex

DEFAULT_RERANK_DEPTH = 32

# Embedding spaces of the support side, by name:
#   "image"     image embedder on images            "question"  text embedder on questions
#   "qa"        text embedder on "question answer"  "joint_qa"  joint embedder's text side on "question answer"
# Query-side embeddings use the same spaces ("joint_question": the joint text side on the question).


@dataclass(frozen=True)
class Strategy:
    name: str
    query_space: str | None  # embedding of the query; None for zero-shot and RS
    support_space: str | None  # embedding of the candidates it is compared with
    rerank: tuple[str, str] | None = None  # (query space, support space) of the second stage
    oracle: bool = False  # uses the query's ground-truth label
    needs_predictions: bool = False
    cross_modal: bool = False  # needs a shared image-text space
    uses_images: bool = False  # excludes the query's image_id when the query is in the support set
    description: str = ""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("zero-shot", None, None, description="no demonstrations"),
        Strategy("RS", None, None, description="uniform random sample, seeded per query"),
        Strategy("SI", "image", "image", uses_images=True, description="image cosine"),
        Strategy("SQ", "question", "question", description="question cosine"),
        Strategy("SQA", "qa", "qa", oracle=True,
                 description="ORACLE: query question + its ground-truth answer vs candidate question + answer"),
        Strategy("SQA-pseudo", "qa", "qa", needs_predictions=True,
                 description="query question + an earlier prediction vs candidate question + answer"),
        Strategy("SI->Q", "image", "image", rerank=("question", "question"), uses_images=True,
                 description="top-32 by image, re-ranked by question"),
        Strategy("SQ->I", "question", "question", rerank=("image", "image"), uses_images=True,
                 description="top-32 by question, re-ranked by image"),
        Strategy("I->SQ", "image", "joint_qa", cross_modal=True, uses_images=True,
                 description="query image vs candidate question + answer text (shared space only)"),
        Strategy("Q->SI", "joint_question", "image", cross_modal=True, uses_images=True,
                 description="query question vs candidate images (shared space only)"),
        Strategy("mixed", "image", "image", uses_images=True, description="SI and SQ interleaved, de-duplicated"),
    )
}


def qa_text(question: str, answer: str) -> str:
    """The text SQA embeds: the question followed by the answer."""
    return f"{question} {answer}"


def demos_for(rows: Sequence[Sequence[int]], support: Sequence[VQAItem]) -> list[list[VQAItem]]:
    """Support row indices (as `retrieve` returns them) -> the support items, same order."""
    return [[support[i] for i in row] for row in rows]


def _embed_unique(embed: Callable[[list[Any]], np.ndarray], keys: Sequence[Any]) -> np.ndarray:
    """Embed each distinct key once (VQAv2 repeats images ~5x and many questions) and spread the rows."""
    unique: dict[Any, int] = {}
    positions = [unique.setdefault(key, len(unique)) for key in keys]
    vectors = embed(list(unique))
    return vectors[np.asarray(positions, dtype=np.int64)]


class Retriever:
    """Retrieval over one support set. Support embeddings and indexes are built lazily, once per space
    ("image", "question", "qa", "joint_qa"), on the first strategy that needs them, or passed in:
    `indexes={"image": VectorIndex.load(dir, embedder_name=r.index_name("image"), data_version=md5)}`,
    whose ids must be support row indices 0..N-1 and whose manifest embedder "<embedder name>:<space>"
    must match (else StaleIndexError)."""

    def __init__(
        self,
        support: Sequence[VQAItem],
        *,
        text_embedder: TextEmbedder | None = None,
        image_embedder: ImageEmbedder | None = None,
        indexes: Mapping[str, VectorIndex] | None = None,
        index_kind: str = "flat",
        rerank_depth: int = DEFAULT_RERANK_DEPTH,
        data_version: str = "",
    ):
        if not support:
            raise ValueError("the support set is empty")
        self.support = list(support)
        self.text_embedder, self.image_embedder = text_embedder, image_embedder
        self.index_kind, self.rerank_depth, self.data_version = index_kind, rerank_depth, data_version
        self._indexes: dict[str, VectorIndex] = dict(indexes or {})
        for space, index in self._indexes.items():
            if len(index) != len(self.support):
                raise ValueError(f"index {space!r} holds {len(index)} vectors, the support set has {len(self.support)}")
            expected = self.index_name(space)
            if index.manifest.embedder and expected and index.manifest.embedder != expected:
                raise StaleIndexError(f"stale index for space {space!r}: embedder differs (expected {expected!r}, "
                                      f"found {index.manifest.embedder!r})")
        self._vectors: dict[str, np.ndarray] = {}
        self._rows_by_qid: dict[int, list[int]] = defaultdict(list)
        self._rows_by_image: dict[int, list[int]] = defaultdict(list)
        for row, item in enumerate(self.support):
            self._rows_by_qid[item.question_id].append(row)
            self._rows_by_image[item.image_id].append(row)

    def __len__(self) -> int:
        return len(self.support)

    # ----- embeddings ------------------------------------------------------------------------------
    def _embed(self, space: str, items: Sequence[VQAItem], answers: Sequence[str]) -> np.ndarray:
        if space == "image":
            assert self.image_embedder is not None
            return _embed_unique(self.image_embedder.embed_images, [str(it.image_path) for it in items])
        if space in ("question", "qa"):
            assert self.text_embedder is not None
            texts = [it.question if space == "question" else qa_text(it.question, a)
                     for it, a in zip(items, answers, strict=True)]
            return _embed_unique(self.text_embedder.embed_texts, texts)
        if space in ("joint_question", "joint_qa"):
            joint: Any = self.image_embedder
            texts = [it.question if space == "joint_question" else qa_text(it.question, a)
                     for it, a in zip(items, answers, strict=True)]
            return _embed_unique(joint.embed_texts, texts)
        raise ValueError(f"unknown embedding space {space!r}")

    def support_vectors(self, space: str) -> np.ndarray:
        if space not in self._vectors:
            if space in self._indexes:
                self._vectors[space] = self._indexes[space].reconstruct_all()
            else:
                answers = [it.multiple_choice_answer for it in self.support]
                self._vectors[space] = self._embed(space, self.support, answers)
        return self._vectors[space]

    def use_vectors(self, space: str, vectors: np.ndarray) -> None:
        """Support embeddings of `space` computed elsewhere (e.g. pooled from the demo feature cache)."""
        if len(vectors) != len(self.support):
            raise ValueError(f"{space}: {len(vectors)} vectors for {len(self.support)} support items")
        self._vectors[space] = np.ascontiguousarray(vectors, dtype=np.float32)

    def available_spaces(self) -> list[str]:
        """Spaces whose support vectors exist already (passed in, computed or from a loaded index)."""
        return sorted(set(self._vectors) | set(self._indexes))

    def index_name(self, space: str) -> str:
        """The embedder name an index of `space` records: "<embedder name>:<space>" ("" without embedder)."""
        embedder: Any = self.image_embedder if space in ("image", "joint_qa") else self.text_embedder
        return f"{embedder.name}:{space}" if embedder is not None else ""

    def index(self, space: str) -> VectorIndex:
        """The support index of `space` (built on first use; save it with `.save(dir)` to reuse it)."""
        if space not in self._indexes:
            self._indexes[space] = VectorIndex.build(self.support_vectors(space), kind=self.index_kind,
                                                     embedder_name=self.index_name(space),
                                                     data_version=self.data_version)
        return self._indexes[space]

    # ----- validation ------------------------------------------------------------------------------
    def check(self, strategy: str, k: int) -> None:
        """Raise ValueError if `strategy` at `k` shots cannot run on this support set (unknown strategy,
        k out of range, a missing embedder or shared space), without embedding or searching anything."""
        self._check(strategy, [], k, None)

    def _check(self, strategy: str, queries: Sequence[VQAItem], k: int,
               predictions: Mapping[int, str] | None) -> Strategy:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown retrieval strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
        spec = STRATEGIES[strategy]
        if strategy == "zero-shot":
            return spec
        if k < 0:
            raise ValueError(f"{strategy}: k must be >= 0, got {k}")
        if k > len(self.support):
            raise ValueError(f"{strategy}: k={k} is larger than the support set ({len(self.support)} items)")
        spaces = {s for s in (spec.query_space, spec.support_space) if s}
        spaces |= set(spec.rerank or ())
        if strategy == "mixed":
            spaces.add("question")
        if spaces & {"image"} and self.image_embedder is None:
            raise ValueError(f"{strategy} needs an image embedder (Retriever(image_embedder=...))")
        if spaces & {"question", "qa"} and self.text_embedder is None:
            raise ValueError(f"{strategy} needs a text embedder (Retriever(text_embedder=...))")
        if spec.cross_modal and not getattr(self.image_embedder, "shared_space", False):
            name = getattr(self.image_embedder, "name", None)
            raise ValueError(
                f"{strategy} is cross-modal and needs one shared image-text space (a JointEmbedder such as "
                f"ClipEmbedder); the image embedder {name!r} has none, and comparing it with the separate text "
                f"embedder would not be a similarity"
            )
        if spec.needs_predictions:
            missing = [q.question_id for q in queries if predictions is None or q.question_id not in predictions]
            if missing:
                raise ValueError(f"{strategy} needs an earlier prediction for every query; missing for "
                                 f"question_ids {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        return spec

    def _excluded(self, spec: Strategy, query: VQAItem, exclude_self: bool) -> set[int]:
        if not exclude_self:
            return set()
        rows = set(self._rows_by_qid.get(query.question_id, ()))
        if spec.uses_images and rows:  # the query comes from the support set: drop its image too
            rows |= set(self._rows_by_image.get(query.image_id, ()))
        return rows

    # ----- search ----------------------------------------------------------------------------------
    def _ranked(self, space_q: str, space_s: str, query_vectors: np.ndarray, depth: int,
                excluded: list[set[int]], strategy: str, queries: Sequence[VQAItem]) -> list[list[int]]:
        """Per query, the top-`depth` allowed support rows by similarity, best first."""
        index = self.index(space_s)
        extra = max((len(e) for e in excluded), default=0)
        want = min(depth + extra, len(index))
        _, found = index.search(query_vectors, want)
        out = []
        for qi, row in enumerate(found):
            kept = [int(r) for r in row if r >= 0 and r not in excluded[qi]][:depth]
            if len(kept) < depth and index.kind == "ivf":  # an approximate search came back short
                _, again = index.search(query_vectors[qi : qi + 1], want, nprobe=index.index.nlist)
                kept = [int(r) for r in again[0] if r >= 0 and r not in excluded[qi]][:depth]
            if len(kept) < depth:
                raise ValueError(f"{strategy}: only {len(kept)} support items are allowed for query "
                                 f"{queries[qi].question_id} (k={depth}) after self-exclusion")
            out.append(kept)
        return out

    def retrieve(
        self,
        strategy: str,
        queries: Sequence[VQAItem],
        k: int,
        *,
        seed: int = 0,
        predictions: Mapping[int, str] | None = None,
        exclude_self: bool = True,
    ) -> list[list[int]]:
        """Support row indices of the k demonstrations of each query, in prompt order (most similar last)."""
        spec = self._check(strategy, queries, k, predictions)
        if strategy == "zero-shot" or k == 0 or not queries:
            return [[] for _ in queries]
        excluded = [self._excluded(spec, q, exclude_self) for q in queries]
        if strategy == "RS":
            return [self._random(q, k, seed, ex) for q, ex in zip(queries, excluded, strict=True)]
        answers = [q.multiple_choice_answer for q in queries]
        if strategy == "SQA-pseudo":
            assert predictions is not None
            answers = [predictions[q.question_id] for q in queries]
        assert spec.query_space is not None and spec.support_space is not None
        qv = self._embed(spec.query_space, queries, answers)
        if strategy == "mixed":
            by_image = self._ranked("image", "image", qv, k, excluded, strategy, queries)
            qv_text = self._embed("question", queries, answers)
            by_question = self._ranked("question", "question", qv_text, k, excluded, strategy, queries)
            return [_interleave(a, b, k)[::-1] for a, b in zip(by_image, by_question, strict=True)]
        if spec.rerank is None:
            ranked = self._ranked(spec.query_space, spec.support_space, qv, k, excluded, strategy, queries)
            return [row[::-1] for row in ranked]
        most_excluded = max(len(e) for e in excluded)
        depth = max(k, min(self.rerank_depth, len(self.support) - most_excluded))
        candidates = self._ranked(spec.query_space, spec.support_space, qv, depth, excluded, strategy, queries)
        rq, rs = spec.rerank
        qv2 = self._embed(rq, queries, answers)
        sv2 = self.support_vectors(rs)
        out = []
        for qi, cands in enumerate(candidates):
            scores = sv2[cands] @ qv2[qi]
            order = np.argsort(-scores, kind="stable")[:k]  # best first; ties keep first-stage order
            out.append([cands[i] for i in order][::-1])
        return out

    def _random(self, query: VQAItem, k: int, seed: int, excluded: set[int]) -> list[int]:
        n = len(self.support)
        if k > n - len(excluded):
            raise ValueError(f"RS: only {n - len(excluded)} support items are allowed for query "
                             f"{query.question_id} (k={k}) after self-exclusion")
        rng = np.random.default_rng([seed % 2**63, query.question_id % 2**63])
        draw = rng.choice(n, size=min(n, k + len(excluded)), replace=False)
        return [int(r) for r in draw if int(r) not in excluded][:k]


def task_pool(item: VQAItem) -> str:
    """The pool of an item: its ICL task family (`icl/<attribute>/<lexicon>`), else "vqa"."""
    return item.question_type if item.is_icl else "vqa"


class PooledRetriever:
    """A Retriever per pool of the support set: each query's demonstrations come only from the support
    items of its own pool (`key(item)`, default `task_pool`). Same interface as Retriever (`support`,
    `check`, `retrieve`); returned rows index the whole support set."""

    def __init__(self, retriever: Retriever, key: Callable[[VQAItem], str] = task_pool, *,
                 flat_below: int = 50_000):
        self.base, self.key, self.flat_below = retriever, key, flat_below
        self.support = retriever.support
        self._rows: dict[str, np.ndarray] = {}
        for row, item in enumerate(self.support):
            self._rows.setdefault(key(item), []).append(row)  # type: ignore[arg-type]
        self._rows = {k: np.asarray(v, dtype=np.int64) for k, v in self._rows.items()}
        self._pools: dict[str, Retriever] = {}

    @property
    def pools(self) -> dict[str, int]:
        """Pool name -> number of support items."""
        return {k: len(v) for k, v in sorted(self._rows.items())}

    def _pool(self, name: str) -> Retriever:
        if name not in self._pools:
            rows = self._rows[name]
            base = self.base
            sub = Retriever([self.support[i] for i in rows], text_embedder=base.text_embedder,
                            image_embedder=base.image_embedder, rerank_depth=base.rerank_depth,
                            index_kind="flat" if len(rows) < self.flat_below else base.index_kind,
                            data_version=base.data_version)
            for space in base.available_spaces():
                sub.use_vectors(space, base.support_vectors(space)[rows])
            self._pools[name] = sub
        return self._pools[name]

    def check(self, strategy: str, k: int) -> None:
        """Retriever.check on every pool (the smallest pool bounds k), naming the pool on failure."""
        self.base.check(strategy, 0)
        for name, rows in self.pools.items():
            if strategy != "zero-shot" and k > rows:
                raise ValueError(f"{strategy}: k={k} is larger than the support pool {name!r} ({rows} items)")

    def retrieve(self, strategy: str, queries: Sequence[VQAItem], k: int, *, seed: int = 0,
                 predictions: Mapping[int, str] | None = None, exclude_self: bool = True) -> list[list[int]]:
        by_pool: dict[str, list[int]] = defaultdict(list)
        for qi, q in enumerate(queries):
            by_pool[self.key(q)].append(qi)
        missing = sorted(set(by_pool) - set(self._rows))
        if missing:
            raise ValueError(f"queries of pool(s) {missing} have no support items (pools: {', '.join(self._rows)})")
        out: list[list[int]] = [[] for _ in queries]
        for name, members in by_pool.items():
            rows = self._rows[name]
            local = self._pool(name).retrieve(strategy, [queries[i] for i in members], k, seed=seed,
                                              predictions=predictions, exclude_self=exclude_self)
            for qi, picks in zip(members, local, strict=True):
                out[qi] = [int(rows[j]) for j in picks]
        return out


def _interleave(first: Sequence[int], second: Sequence[int], k: int) -> list[int]:
    """first[0], second[0], first[1], second[1], ... without repeats, the first k."""
    out: list[int] = []
    seen: set[int] = set()
    for pair in zip(first, second, strict=True):
        for r in pair:
            if r not in seen:
                seen.add(r)
                out.append(r)
    return out[:k]


def retrieve(
    strategy: str,
    query_items: Sequence[VQAItem],
    support_items: Sequence[VQAItem],
    k: int,
    *,
    seed: int = 0,
    text_embedder: TextEmbedder | None = None,
    image_embedder: ImageEmbedder | None = None,
    predictions: Mapping[int, str] | None = None,
    exclude_self: bool = True,
    indexes: Mapping[str, VectorIndex] | None = None,
    index_kind: str = "flat",
) -> list[list[int]]:
    """One-shot form of `Retriever(...).retrieve(...)`; build a Retriever to reuse support indexes."""
    retriever = Retriever(support_items, text_embedder=text_embedder, image_embedder=image_embedder,
                          indexes=indexes, index_kind=index_kind)
    return retriever.retrieve(strategy, query_items, k, seed=seed, predictions=predictions, exclude_self=exclude_self)
