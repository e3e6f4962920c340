"""Figure evaluation of the base model, per multimodal domain, on fresh generated items: does it read, and does
reading help it solve?

    metrics = evaluate_figures(model, processor, {"geo": problems, ...}, samples=8)

Per domain `d` (each with its binomial standard error under `<name>_se/<d>`):
- `reading_acc/d`: the greedy answer to "What does the figure show?" equals the figure's values exactly
  (`FigureProblem.reading`, whitespace normalised);
- `task_acc/d`: the greedy completion of the question verifies against the answer (`verify_batch`, the RL
  accuracy reward of record);
- `blind_acc/d`: the same with the image replaced by a blank one (what the text alone gives);
- `pass_at_<k>/d`: at least one of `samples` completions sampled at temperature 1 verifies (the headroom RL has).
The verifier runs in worker processes: a script that calls this needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from lmmops.data.synthetic.diagrams import FigureProblem
from lmmops.eval.scoring import verify_batch
from lmmops.evaluation.reasoning import generate_completions
from lmmops.models.bootstrap.corpus import reasoning_prompt
from lmmops.models.bootstrap.figures import reading_prompt


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def _correct(completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    return [float(a or 0.0) for a in verify_batch(list(completions), list(answers))]


def evaluate_figures(model: Any, processor: Any, items: dict[str, Sequence[FigureProblem]], *, samples: int = 8,
                     max_new_tokens: int = 64, batch_size: int = 100,
                     samples_out: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Reading, task, blind and pass@`samples` accuracy per domain of `items` (see the module docstring)."""
    out: dict[str, float] = {}
    for domain, problems in items.items():
        if not problems:
            continue
        images = [p.image for p in problems]
        blanks = [Image.new("RGB", p.image.size, (255, 255, 255)) for p in problems]
        questions = [reasoning_prompt(p.question, with_image=True) for p in problems]
        answers = [p.answer for p in problems]
        decode = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
        readings = generate_completions(model, processor, [reading_prompt()] * len(problems), images=images, **decode)
        read = [float(" ".join(r.split()) == p.reading) for r, p in zip(readings, problems, strict=True)]
        greedy = generate_completions(model, processor, questions, images=images, **decode)
        task = _correct(greedy, answers)
        blind = _correct(generate_completions(model, processor, questions, images=blanks, **decode), answers)
        sampled = generate_completions(model, processor, questions, images=images, temperature=1.0, samples=samples,
                                       **decode)
        sample_ok = np.array(_correct(sampled, [a for a in answers for _ in range(samples)])).reshape(-1, samples)
        passed = sample_ok.max(axis=1).tolist()
        n = len(problems)
        for name, scores in (("reading_acc", read), ("task_acc", task), ("blind_acc", blind),
                             (f"pass_at_{samples}", passed)):
            mean = float(np.mean(scores))
            out[f"{name}/{domain}"] = mean
            out[f"{name}_se/{domain}"] = binomial_se(mean, n)
        if samples_out is not None:
            samples_out += [{"domain": domain, "question": p.question, "reading": p.reading, "answer": p.answer,
                             "read": r, "completion": g} for p, r, g in list(zip(problems, readings, greedy,
                                                                                strict=True))[:10]]
    return out
