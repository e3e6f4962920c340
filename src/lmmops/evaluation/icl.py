"""k-shot ICL accuracy of a model on the ICL items of a VQA split, by teacher forcing.

`evaluate_icl(model, processor, items, shots)` asks every ICL query with demonstrations of its own task and
scores it correct when greedy decoding would emit exactly its answer tokens (the argmax at every answer
position), which needs one forward pass per prompt instead of a generation loop. It also reports the chance
level of a uniform task guess (`icl_chance`) and how often an "en"/"alias" query is answered with the twin
task's word when the demos tell the twins apart (`telling_twin_answer`).

Run: `.venv/bin/python -m pytest tests/evaluation/test_icl.py -q`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmmops.data.icl_tasks import ICL_TASKS, get_icl_task, tasks_sharing_vocabulary
from lmmops.data.schemas import VQAItem
from lmmops.eval.analysis import split_by_mask
from lmmops.models.adapters import adapter_for
from lmmops.models.bootstrap.corpus import open_image
from lmmops.models.prompt import ICLItem


def icl_chance(item: VQAItem) -> float:
    """Accuracy of guessing the task uniformly: the share of the 9 tasks that give this item's answer."""
    task = get_icl_task(item.question_type)
    value = next(v for v, a in task.mapping if a == item.multiple_choice_answer)
    same = [t for t in ICL_TASKS if t.attribute == task.attribute]
    return sum(t.answer_for_value(value) == item.multiple_choice_answer for t in same) / len(ICL_TASKS)


def telling_twin_answer(query: VQAItem, demos: Sequence[VQAItem]) -> str | None:
    """The twin task's answer to an "en"/"alias" query whose value the two tasks answer differently, when one of
    `demos` shows such a value (so the demos tell "en" from "alias"); else None. E.g. a colour/alias query of a
    red image (answer "crimson"), with a demo of a red image answered "crimson": "red", the colour/en answer.
    The twin is the one other task whose answer words overlap (`tasks_sharing_vocabulary`)."""
    task = get_icl_task(query.question_type)
    twins = tasks_sharing_vocabulary(task.name)
    if len(twins) != 1:
        return None
    twin = get_icl_task(twins[0])

    def telling(item: VQAItem) -> str | None:  # the item's value if the twins answer it differently
        value = next(v for v, a in task.mapping if a == item.multiple_choice_answer)
        return value if twin.answer_for_value(value) != item.multiple_choice_answer else None

    value = telling(query)
    if value is None or not any(telling(d) for d in demos):
        return None
    return twin.answer_for_value(value)


@torch.no_grad()
def evaluate_icl(
    model: Any,
    processor: Any,
    items: Sequence[VQAItem],
    shots: Sequence[int] = (0, 1, 2, 4, 8),
    *,
    repeats: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    demo_pool: Sequence[VQAItem] | None = None,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """k-shot accuracy on the ICL items of `items`, per task and averaged, for every k in `shots`.

    Each ICL query is asked `repeats` times with demonstrations drawn from the other items of its task
    (in `demo_pool` when given, else in `items`); the k-shot prompt uses the first k of the same draw, so
    the shot counts differ only in k. Correct = greedy decoding emits exactly the answer tokens (teacher
    forced, one forward pass). Returns icl_acc_<k>shot, icl_acc_<k>shot/<task>, the same without the near-duplicate
    queries (icl_acc_nodup_<k>shot, icl_acc_nodup_<k>shot/<task>, icl_queries_nodup), icl_chance, icl_queries, and
    icl_twin_rate_<k>shot (k >= 1): over the "en" and "alias" queries whose value the two answer differently and
    whose demos include one such value (so the demos tell the two tasks apart), the share answered with the twin
    task's word. A model that reads the lexicon off the demos drives it to 0; one that only recognises the
    attribute and guesses between the twins stays near 0.5.
    """
    adapter = adapter_for(model, processor)
    queries = [it for it in items if it.is_icl]
    pool: dict[str, list[VQAItem]] = defaultdict(list)
    for it in demo_pool if demo_pool is not None else queries:
        if it.is_icl:
            pool[it.question_type].append(it)
    images: dict[Path, Image.Image] = {}

    def as_icl(it: VQAItem) -> ICLItem:
        if it.image_path not in images:
            images[it.image_path] = open_image(it.image_path)
        return ICLItem(images[it.image_path], it.question, it.multiple_choice_answer)

    max_k = max(shots)
    jobs: list[tuple[int, str, list[VQAItem], VQAItem]] = []
    for qi, q in enumerate(queries):
        candidates = [d for d in pool[q.question_type] if d.question_id != q.question_id]
        for r in range(repeats):
            rng = np.random.default_rng([seed, qi, r])
            picks = rng.choice(len(candidates), size=min(max_k, len(candidates)), replace=False)
            demos = [candidates[i] for i in picks]
            jobs += [(k, q.question_type, demos[:k], q) for k in shots]
    # Batches of one shot count each (jobs sorted by k, stable): a batch is right-padded to its longest prompt,
    # and mixing 0- and 16-shot prompts in one batch made every row cost a 16-shot forward (~2.5x the compute).
    # Right padding never reaches a real token (causal attention), so the order changes nothing but the time.
    device = next(model.parameters()).device
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][0])
    answers: list[tuple[bool, torch.Tensor]] = [None] * len(jobs)  # type: ignore[list-item]
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        batch = adapter.build_prompts([([as_icl(d) for d in jobs[j][2]], as_icl(jobs[j][3])) for j in chunk],
                                      with_answer=True).to(device)
        logits = model(**batch.model_inputs()).logits
        for row, j in enumerate(chunk):
            s, e = batch.answer_spans[row]
            predicted = logits[row, s - 1 : e - 1].argmax(-1)
            answers[j] = (bool((predicted == batch.input_ids[row, s:e]).all()), predicted.cpu())
    correct: dict[tuple[int, str], list[float]] = defaultdict(list)
    duplicate: dict[tuple[int, str], list[bool]] = defaultdict(list)  # beside `correct`: a near-duplicate query
    twin_answers: dict[int, list[float]] = defaultdict(list)
    for (k, task, _demos, q), (ok, predicted) in zip(jobs, answers, strict=True):
        correct[(k, task)].append(float(ok))
        duplicate[(k, task)].append(q.near_duplicate_of is not None)
        twin = telling_twin_answer(q, _demos)
        if twin is not None:
            twin_answers[k].append(float(processor.tokenizer.decode(predicted).strip() == twin))
        if samples_out is not None and len(samples_out) < 40 and k in (0, max_k):
            samples_out.append({"shots": k, "task": task, "answer": q.multiple_choice_answer,
                                "predicted": processor.tokenizer.decode(predicted), "correct": ok})
    out: dict[str, float] = {}
    tasks = sorted({t for _, t in correct})
    for k in shots:
        per_task = {t: float(np.mean(correct[(k, t)])) for t in tasks}
        out[f"icl_acc_{k}shot"] = float(np.mean([v for t in tasks for v in correct[(k, t)]])) if tasks else 0.0
        out.update({f"icl_acc_{k}shot/{t.removeprefix('icl/')}": v for t, v in per_task.items()})
        if twin_answers[k]:
            out[f"icl_twin_rate_{k}shot"] = float(np.mean(twin_answers[k]))
        # The same scores without the near-duplicate queries (near-copies of a train item; synthetic data only).
        kept = {t: split_by_mask(correct[(k, t)], duplicate[(k, t)])[1] for t in tasks}
        if any(kept.values()):
            out[f"icl_acc_nodup_{k}shot"] = float(np.mean([v for t in tasks for v in kept[t]]))
        out.update({f"icl_acc_nodup_{k}shot/{t.removeprefix('icl/')}": float(np.mean(v)) for t, v in kept.items()
                    if v})
    out["icl_chance"] = float(np.mean([icl_chance(q) for q in queries])) if queries else 0.0
    out["icl_queries"] = float(len(queries))
    out["icl_queries_nodup"] = float(sum(q.near_duplicate_of is None for q in queries))
    return out
