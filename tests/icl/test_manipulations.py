"""Manipulations of demonstrations: each changes exactly what it says, deterministically."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.eval.metrics import normalize_answer
from lmmops.icl.manipulations import (
    DEFAULT_INSTRUCTION,
    MANIPULATIONS,
    apply_manipulation,
    instruction_prefix,
    mismatch_answers,
    mismatch_images,
    mismatch_questions,
    reverse_order,
    wrong_answers,
)

ANSWERS = ["red", "two", "yes", "no", "2", "cat", "dog", "blue"]  # "two" and "2" are the same answer normalised


def item(n: int, answer: str, extra: tuple[str, ...] = ()) -> VQAItem:
    answers = tuple(VQAAnswer(a, "yes", i + 1) for i, a in enumerate((answer,) * (10 - len(extra)) + extra))
    return VQAItem(question_id=100 + n, image_id=n // 2, question=f"Question number {n % 5}?", question_type="what",
                   answer_type="other", multiple_choice_answer=answer, answers=answers,
                   image_path=Path(f"/img/{n // 2}.png"), split="train")


@pytest.fixture
def support() -> list[VQAItem]:
    return [item(n, ANSWERS[n % len(ANSWERS)], ("blue",) if n % 3 == 0 else ()) for n in range(40)]


@pytest.fixture
def demos(support: list[VQAItem]) -> list[VQAItem]:
    return support[3:9]


def changed_fields(a: VQAItem, b: VQAItem) -> set[str]:
    return {f.name for f in fields(VQAItem) if getattr(a, f.name) != getattr(b, f.name)}


def test_mismatch_images_changes_only_the_image(demos: list[VQAItem], support: list[VQAItem]) -> None:
    out = mismatch_images(demos, support, seed=1)
    for d, m in zip(demos, out, strict=True):
        assert changed_fields(d, m) == {"image_path", "image_id"}
        assert any(s.image_path == m.image_path and s.image_id == m.image_id for s in support)  # another item's


def test_mismatch_questions_changes_only_the_question(demos: list[VQAItem], support: list[VQAItem]) -> None:
    out = mismatch_questions(demos, support, seed=1)
    for d, m in zip(demos, out, strict=True):
        assert changed_fields(d, m) <= {"question", "question_type"} and m.question != d.question
        assert m.question in {s.question for s in support}


def test_mismatch_answers_gives_every_demo_another_items_answer(demos: list[VQAItem], support: list[VQAItem]) -> None:
    out = mismatch_answers(demos, support, seed=1)
    for d, m in zip(demos, out, strict=True):
        assert changed_fields(d, m) <= {"multiple_choice_answer", "answers", "answer_type"}
        assert normalize_answer(m.multiple_choice_answer) != normalize_answer(d.multiple_choice_answer)
        donors = [s for s in support if (s.multiple_choice_answer, s.answers) == (m.multiple_choice_answer, m.answers)]
        assert donors and all(s.question_id != d.question_id for s in donors)


def test_wrong_answers_are_not_among_the_ten(demos: list[VQAItem], support: list[VQAItem]) -> None:
    out = wrong_answers(demos, support, seed=2)
    for d, m in zip(demos, out, strict=True):
        assert changed_fields(d, m) <= {"multiple_choice_answer", "answers", "answer_type"}
        truth = {normalize_answer(a) for a in d.answer_strings}
        assert normalize_answer(m.multiple_choice_answer) not in truth  # e.g. never "2" for "two", never "blue"
        assert set(m.answer_strings) == {m.multiple_choice_answer} and len(m.answers) == 10
        assert m.multiple_choice_answer in {s.multiple_choice_answer for s in support}


def test_wrong_answer_impossible_raises() -> None:
    same = [item(n, "yes") for n in range(5)]
    with pytest.raises(ValueError, match="wrong_answers: no support item can replace demo question_id 100"):
        wrong_answers(same[:1], same, seed=0)


def test_reverse_order(demos: list[VQAItem]) -> None:
    assert reverse_order(demos) == demos[::-1]
    assert reverse_order(reverse_order(demos)) == demos


@pytest.mark.parametrize("name", sorted(MANIPULATIONS))
def test_manipulations_are_seeded_pure_and_deterministic(name: str, demos: list[VQAItem],
                                                         support: list[VQAItem]) -> None:
    before = list(demos)
    a = apply_manipulation(name, demos, support, seed=5)
    assert a == apply_manipulation(name, demos, support, seed=5)
    assert demos == before  # inputs untouched
    assert len(a) == len(demos)
    if name != "reverse":
        outs = {tuple(apply_manipulation(name, demos, support, seed=s)) for s in range(6)}
        assert len(outs) > 1  # the seed matters


def test_apply_manipulation_none_and_unknown(demos: list[VQAItem], support: list[VQAItem]) -> None:
    assert apply_manipulation("none", demos, support) == demos
    with pytest.raises(ValueError, match="unknown manipulation 'shuffle'"):
        apply_manipulation("shuffle", demos, support)


def test_instruction_prefix() -> None:
    assert instruction_prefix() == DEFAULT_INSTRUCTION
    assert instruction_prefix("  Answer briefly.  ") == "Answer briefly."
    with pytest.raises(ValueError, match="empty"):
        instruction_prefix(" ")
