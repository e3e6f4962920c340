"""Generation on a pool's items for the in-context vector stages: vectors and zero-shot under the stage's
decoding, the k-shot ICL reference, the test split once, and the latency timings.

  - `evaluate_with_decoding`: `evaluate_vectors` under the stage's decoding (val selection and test scoring);
  - `score_icl_reference`: per pool, each test query answered with k random demos from the pool's train items
    (`icl_demos`), under `draws` independent draws, scored by its mean over them (the `icl-reference` stage);
  - `evaluate_test`: after every pool is trained, each selected vector set answers its pool's TEST items once,
    the same items are answered zero-shot, and the generation with vectors and zero-shot is timed at the same
    batch size (best of `repeats`, interleaved, so drifting machine load hits both alike); the ICL reference is
    given (read from the icl-reference stage's output), its timing is its scored run's (best of the draws).

Use (what `lmmops.stages.vectors` does):
    icl = score_icl_reference(model, processor, pools, shots=16, seed=0, draws=1, batch_size=64, ...)
    test = evaluate_test(model, processor, {p: t.vectors for p, t in training.items()}, pools, icl, ...)

Run: `python -m pytest tests/vectors/test_icl_reference.py -q`.
Departure from the papers: k-shot ICL draws its k demos without replacement (the papers' RS) `draws` times per
test query and averages, where the papers report one draw (or a few seeds of the whole evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from lmmops.data.schemas import VQAItem
from lmmops.eval.analysis import paired_gap
from lmmops.icl.experiment import item_accuracy
from lmmops.icl.inference import ICLRunner, decoding
from lmmops.vectors.base import VectorSet
from lmmops.vectors.train import attached, evaluate_vectors


def evaluate_with_decoding(model: nn.Module, processor: Any, vectors: VectorSet | None, items: Sequence[VQAItem], *,
                           num_beams: int = 1, answer_cut: Sequence[str] = (), **kw: Any) -> dict[str, float]:
    """`evaluate_vectors(..., **kw)` under the stage's decoding (`num_beams`, `answer_cut`; its runner reads the
    `decoding` scope), so that vectors, zero-shot and ICL are scored alike."""
    with decoding(num_beams, answer_cut):
        return evaluate_vectors(model, processor, vectors, items, **kw)


def icl_demos(query: VQAItem, pool: Sequence[VQAItem], shots: int, *, seed: int, index: int,
              draw: int = 0) -> list[VQAItem]:
    """`shots` distinct random demos for the `index`-th query from its pool's train items (never the query);
    `draw` numbers independent demo sets for the same query (draw 0 is the one earlier versions used)."""
    candidates = [d for d in pool if d.question_id != query.question_id]
    rng = np.random.default_rng([seed, index] if draw == 0 else [seed, index, draw])
    picks = rng.choice(len(candidates), size=min(shots, len(candidates)), replace=False)
    return [candidates[int(i)] for i in picks]


def timed_generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: VectorSet | None,
                   instruction: str | None) -> tuple[list[str], float]:
    """(the runner's answers to `prompts` with `vectors` attached, or plain; the wall time of generating them)."""
    model = runner.model
    if vectors is not None:
        vectors.to(next(model.parameters()).device)
    t0 = time.perf_counter()
    with attached(model, vectors, runner.adapter) if vectors is not None else nullcontext():
        answers = runner.predict(prompts, instruction=instruction, desc="timing")
    return answers, time.perf_counter() - t0


def generation_seconds(
    model: nn.Module,
    processor: Any,
    runs: Mapping[str, tuple[list[tuple[list[VQAItem], VQAItem]], VectorSet | None]],
    *,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    repeats: int,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
) -> dict[str, float]:
    """Best-of-`repeats` wall time of generating each named run's prompts (with its vectors attached, or plain).

    The runs are interleaved within each repeat (run A, B, C, A, B, C, ...) so that a change of machine load
    affects all of them; nothing is scored (timing only).
    """
    runner = ICLRunner(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                       answer_cut=answer_cut, progress=False)
    best = {name: float("inf") for name in runs}
    for _ in range(max(1, repeats)):
        for name, (prompts, vectors) in runs.items():
            best[name] = min(best[name], timed_generate(runner, prompts, vectors, instruction)[1])
    return best


@dataclass
class IclScores:
    """A pool's k-shot ICL reference: per test item its score (the mean over the demo draws), and the best
    generation seconds of the draws."""

    item_acc: list[float]
    seconds: float


def score_icl_reference(
    model: nn.Module,
    processor: Any,
    pools: Mapping[str, Mapping[str, Sequence[VQAItem]]],
    *,
    shots: int,
    seed: int,
    draws: int,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
) -> dict[str, IclScores]:
    """{pool: IclScores}: each pool's test items answered with `shots` random demos from its train items.

    Each query is scored over `draws` independent demo draws, by its mean over them: the expected k-shot accuracy
    under random demos, which one draw estimates with the extra variance of the draw (on ~27 items a pool's
    single-draw accuracy moves by several points with the draw alone). Decoding is the vector stages' (the same
    template, instruction, batch size, beams and answer cut)."""
    if draws < 1:
        raise ValueError(f"icl_draws must be >= 1, got {draws}")
    runner = ICLRunner(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                       answer_cut=answer_cut, progress=False)
    out: dict[str, IclScores] = {}
    for pool, items in pools.items():
        test, train = list(items["test"]), list(items["train"])
        item_acc = [0.0] * len(test)
        seconds = float("inf")
        for draw in range(draws):
            prompts = [(icl_demos(q, train, shots, seed=seed, index=i, draw=draw), q) for i, q in enumerate(test)]
            predictions, elapsed = timed_generate(runner, prompts, None, instruction)
            seconds = min(seconds, elapsed)  # best of the draws, like the other timings' best-of
            for i, (p, q) in enumerate(zip(predictions, test, strict=True)):
                item_acc[i] += item_accuracy(p, q) / draws
        out[pool] = IclScores(item_acc, seconds)
    return out


@dataclass
class TestResult:
    """Per pool: test accuracy with the selected vectors, zero-shot and k-shot ICL; generation seconds."""

    vector_acc: dict[str, float]
    zero_shot_acc: dict[str, float]
    icl_acc: dict[str, float]
    seconds: dict[str, dict[str, float]]  # pool -> {"zero-shot", "vectors", "icl"} -> best seconds
    samples: dict[str, list[dict[str, Any]]]  # pool -> predictions of the vectors on the test items
    # pool -> (ICL minus vectors, mean over the test items, its paired standard error)
    gap: dict[str, tuple[float, float]] = field(default_factory=dict)
    # pool -> {"vectors", "zero-shot", "icl"} -> per-test-item scores (the accuracies above are their means)
    item_acc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # pool -> per test item: a near-duplicate of a train item (VQAItem.near_duplicate_of; synthetic data only)
    near_duplicate: dict[str, list[bool]] = field(default_factory=dict)

    def latency_rel(self, which: str) -> float:
        """Generation time of `which` ("vectors" or "icl") over zero-shot, summed over pools."""
        zero = sum(s["zero-shot"] for s in self.seconds.values())
        return sum(s[which] for s in self.seconds.values()) / zero if zero > 0 else float("nan")


def evaluate_test(
    model: nn.Module,
    processor: Any,
    vectors: Mapping[str, VectorSet],
    pools: Mapping[str, Mapping[str, Sequence[VQAItem]]],
    icl: Mapping[str, IclScores],
    *,
    batch_size: int,
    max_new_tokens: int,
    instruction: str | None,
    repeats: int,
    num_beams: int = 1,
    answer_cut: Sequence[str] = (),
) -> TestResult:
    """Score each pool's selected `vectors` on its test items (once), next to zero-shot and the k-shot ICL
    reference `icl` ({pool: IclScores} of the same test items, in the same order: `score_icl_reference`).

    The vectors and zero-shot are deterministic (greedy), so they are scored once; their generation is then timed
    `repeats` times (interleaved); the ICL timing is the reference's.
    """
    out = TestResult({}, {}, {}, {}, {})
    for pool, vs in vectors.items():
        test = list(pools[pool]["test"])
        samples: list[dict[str, Any]] = []
        kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "instruction": instruction,
              "num_beams": num_beams, "answer_cut": tuple(answer_cut)}
        out.vector_acc[pool] = evaluate_with_decoding(model, processor, vs, test, samples_out=samples,
                                                      **kw)["accuracy"]
        out.samples[pool] = samples
        zero_samples: list[dict[str, Any]] = []
        out.zero_shot_acc[pool] = evaluate_with_decoding(model, processor, None, test, samples_out=zero_samples,
                                                         **kw)["accuracy"]
        icl_item_acc = icl[pool].item_acc
        out.icl_acc[pool] = float(sum(icl_item_acc) / len(icl_item_acc))
        out.gap[pool] = paired_gap(icl_item_acc, [s["accuracy"] for s in samples])
        out.item_acc[pool] = {"vectors": [float(s["accuracy"]) for s in samples],
                              "zero-shot": [float(s["accuracy"]) for s in zero_samples],
                              "icl": [float(a) for a in icl_item_acc]}
        out.near_duplicate[pool] = [q.near_duplicate_of is not None for q in test]
        zero = [([], q) for q in test]
        out.seconds[pool] = generation_seconds(
            model, processor, {"zero-shot": (zero, None), "vectors": (zero, vs)},
            batch_size=batch_size, max_new_tokens=max_new_tokens, instruction=instruction, repeats=repeats,
            num_beams=num_beams, answer_cut=answer_cut)
        # k-shot ICL costs several times zero-shot: its scored runs are its timings (best of the draws).
        out.seconds[pool]["icl"] = icl[pool].seconds
    return out
