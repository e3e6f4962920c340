"""ICL analyses from the talk (PAPERS.md §1). Pure functions over predictions and demonstrations.

- `copy_rate(predictions, demo_answers)`: the share of predictions that equal, after VQA answer
  normalisation, an answer that appears among that query's in-context demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence

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
