"""Manipulations of retrieved demonstrations (docs/methods.md §1), to study what a model learns from them.

    from lmmops.icl.manipulations import mismatch_answers, wrong_answers, reverse_order, apply_manipulation
    demos = demos_for(rows, support)[0]                      # list[VQAItem] of one query
    mismatch_answers(demos, support, seed=0)                 # each answer from a random other item
    wrong_answers(demos, support, seed=0)                    # an answer not among the demo's 10
    apply_manipulation("mismatch_image", demos, support, seed=0)
    instruction_prefix()                                     # the instruction string (prompt builders prepend it)

Every function is pure (returns new items via dataclasses.replace; the inputs are frozen dataclasses)
and deterministic given `seed` (derive it per query, e.g. `seed * 1_000_003 + query.question_id`, so that
queries do not all draw the same donors). Donors are drawn from `support`, never the demo itself:
- mismatch_images: image (image_path and image_id) from a random support item with another image_id;
- mismatch_questions: question (and question_type) from a random support item with a different question
  text (VQAv2 repeats questions verbatim, so "another item" alone could leave it unchanged);
- mismatch_answers: multiple_choice_answer, answers and answer_type from a random support item whose
  answer differs (after VQA normalisation) from the demo's: every demo's answer changes;
- wrong_answers: an answer that is among none of the demo's 10 ground-truth answers (normalised), taken
  from a random support item; the demo's 10 answers all become that answer;
- reverse_order: the list reversed (retrieval returns most similar last, so this puts it first);
- instruction_prefix: returns the instruction text; it is not an item change, the prompt builder takes it
  (`adapter.build_prompt(..., instruction=...)`).
Only the named fields change; everything else (question_id, split, ...) is kept, so a manipulated demo
can still be traced to its source item. A demo whose donor cannot exist (e.g. every support item has the
same answer) raises ValueError naming it.

Run: `python -m pytest tests/icl/test_manipulations.py -q`.

Departures from the reference: the reference mismatches by shuffling within the retrieved demos, which can
leave a demo unchanged (a fixed point of the shuffle) or give it an identical answer; here every demo
is guaranteed to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.eval.metrics import normalize_answer

DEFAULT_INSTRUCTION = "Answer the question about the image with a short answer, as in the examples."
_TRIES = 64  # random draws before falling back to a scan of the support set


def _donor(rng: np.random.Generator, support: Sequence[VQAItem], ok: Callable[[VQAItem], bool], what: str,
           demo: VQAItem) -> VQAItem:
    """A random support item satisfying `ok`: rejection sampling, then a seeded scan (rare cases)."""
    if not support:
        raise ValueError(f"{what}: the support set is empty")
    for i in rng.integers(0, len(support), size=_TRIES):
        if ok(support[int(i)]):
            return support[int(i)]
    start = int(rng.integers(0, len(support)))
    for j in range(len(support)):
        cand = support[(start + j) % len(support)]
        if ok(cand):
            return cand
    raise ValueError(f"{what}: no support item can replace demo question_id {demo.question_id}")


def mismatch_images(demos: Sequence[VQAItem], support: Sequence[VQAItem], *, seed: int = 0) -> list[VQAItem]:
    rng = np.random.default_rng(seed)
    out = []
    for d in demos:
        donor = _donor(rng, support, lambda c, d=d: c.image_id != d.image_id and c.image_path != d.image_path,
                       "mismatch_images", d)
        out.append(replace(d, image_path=donor.image_path, image_id=donor.image_id))
    return out


def mismatch_questions(demos: Sequence[VQAItem], support: Sequence[VQAItem], *, seed: int = 0) -> list[VQAItem]:
    rng = np.random.default_rng(seed)
    out = []
    for d in demos:
        donor = _donor(rng, support, lambda c, d=d: c.question.strip().lower() != d.question.strip().lower(),
                       "mismatch_questions", d)
        out.append(replace(d, question=donor.question, question_type=donor.question_type))
    return out


def mismatch_answers(demos: Sequence[VQAItem], support: Sequence[VQAItem], *, seed: int = 0) -> list[VQAItem]:
    rng = np.random.default_rng(seed)
    out = []
    for d in demos:
        own = normalize_answer(d.multiple_choice_answer)
        donor = _donor(rng, support, lambda c, own=own: normalize_answer(c.multiple_choice_answer) != own,
                       "mismatch_answers", d)
        out.append(replace(d, multiple_choice_answer=donor.multiple_choice_answer, answers=donor.answers,
                           answer_type=donor.answer_type))
    return out


def wrong_answers(demos: Sequence[VQAItem], support: Sequence[VQAItem], *, seed: int = 0) -> list[VQAItem]:
    rng = np.random.default_rng(seed)
    out = []
    for d in demos:
        truth = {normalize_answer(a) for a in (*d.answer_strings, d.multiple_choice_answer)}
        donor = _donor(rng, support, lambda c, truth=truth: normalize_answer(c.multiple_choice_answer) not in truth,
                       "wrong_answers", d)
        wrong = donor.multiple_choice_answer
        n = max(len(d.answers), 1)
        answers = tuple(VQAAnswer(answer=wrong, answer_confidence="yes", answer_id=i + 1) for i in range(n))
        out.append(replace(d, multiple_choice_answer=wrong, answers=answers, answer_type=donor.answer_type))
    return out


def reverse_order(demos: Sequence[VQAItem]) -> list[VQAItem]:
    return list(reversed(demos))


def instruction_prefix(instruction: str | None = None) -> str:
    """The instruction to prepend (DEFAULT_INSTRUCTION unless given); pass it to the prompt builder."""
    text = DEFAULT_INSTRUCTION if instruction is None else instruction
    if not text.strip():
        raise ValueError("the instruction is empty")
    return text.strip()


MANIPULATIONS: dict[str, Callable[..., list[VQAItem]]] = {
    "mismatch_image": mismatch_images,
    "mismatch_question": mismatch_questions,
    "mismatch_answer": mismatch_answers,
    "wrong_answer": wrong_answers,
    "reverse": lambda demos, support=None, *, seed=0: reverse_order(demos),
}


def apply_manipulation(name: str, demos: Sequence[VQAItem], support: Sequence[VQAItem], *,
                       seed: int = 0) -> list[VQAItem]:
    """Apply the manipulation `name` (a key of MANIPULATIONS; "none" returns a copy)."""
    if name == "none":
        return list(demos)
    if name not in MANIPULATIONS:
        raise ValueError(f"unknown manipulation {name!r}; manipulations: none, {', '.join(MANIPULATIONS)}")
    return MANIPULATIONS[name](demos, support, seed=seed)
