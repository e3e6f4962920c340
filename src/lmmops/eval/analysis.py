"""ICL analyses from the talk (docs/methods.md §2). Pure functions over predictions and demonstrations.

- `copy_rate(predictions, demo_answers)`: the share of predictions that equal, after VQA answer
  normalisation, an answer that appears among that query's in-context demonstrations.
- `task_recognition_learning(acc_correct, acc_manipulated)`: TR = the accuracy with wrong/mismatched
  demonstration answers (the model still recognises the task format), TL = the extra accuracy that the
  correct answers bring (acc_correct - TR, may be negative).
- `shot_gains(acc_by_shots)`: the accuracy gain of each doubling of shots, to check that gains shrink.
- `accuracy_by(values, keys)`: mean accuracy per group (e.g. per question type).
- `paired_gap(a, b)`: mean of a - b over the same items and its standard error (how far apart two methods
  scored on one test set are, and how much of that a test set of this size can resolve).
- `mean_se(values)`, `split_by_mask(values, mask)`, `mean_without(values, drop)`: a per-item accuracy's mean and
  standard error, and the same without flagged items (the `*_nodup` metrics: test accuracy without the
  near-duplicates of train items, from the same per-item scores).

Run: `pytest tests/eval -q`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import pairwise

from lmmops.eval.metrics import normalize_answer


def copy_rate(predictions: Sequence[str], demo_answers: Sequence[Sequence[str]]) -> float:
    """Share in [0, 1] of predictions copied from their own demonstrations' answers.

    demo_answers[i] lists the answers shown in query i's demonstrations (for a VQA demo, its
    multiple-choice answer). Zero-shot queries (no demos) count as not copied."""
    if len(predictions) != len(demo_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(demo_answers)} demonstration lists")
    if not predictions:
        return 0.0
    copied = 0
    for pred, demos in zip(predictions, demo_answers, strict=True):
        norm = normalize_answer(pred)
        copied += any(norm == normalize_answer(d) for d in demos)
    return copied / len(predictions)


def task_recognition_learning(acc_correct: float, acc_manipulated: float) -> dict[str, float]:
    """{"TR": accuracy with wrong demo answers, "TL": acc_correct - TR} (docs/methods.md §2)."""
    return {"TR": acc_manipulated, "TL": acc_correct - acc_manipulated}


def shot_gains(acc_by_shots: Mapping[int, float]) -> dict[int, float]:
    """Gain over the next smaller shot count: {k: acc[k] - acc[previous k]} for every k but the smallest."""
    shots = sorted(acc_by_shots)
    return {k: acc_by_shots[k] - acc_by_shots[prev] for prev, k in pairwise(shots)}


def accuracy_by(values: Sequence[float], keys: Sequence[str]) -> dict[str, float]:
    """Mean of `values` per key, keys sorted."""
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} values for {len(keys)} keys")
    groups: dict[str, list[float]] = defaultdict(list)
    for v, k in zip(values, keys, strict=True):
        groups[k].append(v)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def paired_gap(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean of a_i - b_i, its standard error sd(a - b) / sqrt(n)) over items scored by both methods.

    The standard error uses the sample standard deviation (n - 1); it is nan for fewer than two items."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}: a paired gap needs the same items")
    if not a:
        raise ValueError("a paired gap needs at least one item")
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    if len(d) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in d) / (len(d) - 1)
    return m, (var / len(d)) ** 0.5


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error sd / sqrt(n) with the sample sd (n - 1)) of `values`; the mean is nan for no value,
    the standard error nan for fewer than two."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    return m, (sum((x - m) ** 2 for x in values) / (n - 1) / n) ** 0.5


def split_by_mask(values: Sequence[float], mask: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(the values where `mask` is true, the values where it is false), each in order."""
    if len(values) != len(mask):
        raise ValueError(f"{len(values)} values for a mask of {len(mask)}")
    kept = [v for v, m in zip(values, mask, strict=True) if m]
    return kept, [v for v, m in zip(values, mask, strict=True) if not m]


def mean_without(values: Sequence[float], drop: Sequence[bool]) -> tuple[float, float, int]:
    """(mean, standard error, count) of the per-item `values` whose `drop` flag is false: e.g. a test accuracy
    without the near-duplicate items (drop = item.near_duplicate_of is not None), from the same per-item scores.
    Mean and standard error as `mean_se` (nan when nothing, or fewer than two items, is left)."""
    _, kept = split_by_mask(values, drop)
    m, se = mean_se(kept)
    return m, se, len(kept)
