"""The multimodal generator: values only in the figure by default, answers that follow from the reading,
held-out items that never repeat a train item."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest

from lmmops.data.synthetic.diagrams import SUBSET_KINDS, SUBSETS, HeldOut, draw_problem, draw_split
from lmmops.data.synthetic.steps import plan_steps

NUMBER = re.compile(r"\d+")


def _problems(values_in_text: bool, n: int = 30):
    rng = np.random.default_rng(7)
    return [draw_problem(subset, rng, 32, values_in_text=values_in_text, kind_index=i)
            for subset in SUBSET_KINDS for i in range(n)]


def test_by_default_the_values_are_only_in_the_figure() -> None:
    for p in _problems(values_in_text=False):
        assert not NUMBER.search(p.stem), (p.kind, p.stem)  # the stem names the task, never a value
        assert NUMBER.search(p.reading), (p.kind, p.reading)
        assert p.image.size == (32, 32)


def test_the_text_variant_states_every_value_read_from_the_figure() -> None:
    for p in _problems(values_in_text=True):
        for value in NUMBER.findall(p.reading):
            assert re.search(rf"\b{value}\b", p.stem), (p.kind, value, p.stem)


def _evaluate(plan: str) -> Fraction:
    """The plan's right-hand side ("x = 180 - 69 - 40" -> 71; "green: 3 + 1" -> 4), exactly."""
    rhs = re.split(r"[=:]", plan)[-1]
    return Fraction(eval(re.sub(r"(\d+)", r"Fraction(\1)", rhs), {"Fraction": Fraction}))  # digits and + - * / ( )


def test_the_answer_is_what_the_plan_computes_from_the_reading() -> None:
    for p in _problems(values_in_text=False, n=60):
        for value in NUMBER.findall(p.plan):
            assert value in p.reading.split() or value in ("2", "180", "360"), (p.kind, p.plan, p.reading)
        expected = _evaluate(p.plan)
        value = p.value.rstrip("°")
        if value.startswith("\\frac"):
            num, den = re.findall(r"\{(\d+)\}", value)
            assert Fraction(int(num), int(den)) == expected
        else:
            assert Fraction(int(value)) == expected, (p.kind, p.plan, p.value)


def test_hand_checked_triangle() -> None:
    rng = np.random.default_rng(0)
    p = draw_problem("geo", rng, 32, kind_index=0)
    a, b = map(int, p.reading.split(" , "))
    assert p.kind == "triangle" and p.plan == f"x = 180 - {a} - {b}" and int(p.value.rstrip("°")) == 180 - a - b


def test_a_held_out_split_repeats_no_train_key_and_no_answer_its_text_gives() -> None:
    rng = np.random.default_rng(1)
    train = HeldOut()
    train_items = draw_split("multimath", 300, rng, 32, 0.5)
    for p in train_items:
        train.add(p)
    assert len({p.key for p in train_items}) == 300
    test_items = draw_split("multimath", 100, rng, 32, 0.5, avoid=train)
    for p in test_items:
        assert p.key not in train.keys
        assert train.text_answers.get(p.question) != {p.answer}
    # the text variant does give the answer away: such items must be the ones that were redrawn
    assert any(train.text_answers.get(p.question) == {p.answer} for p in draw_split("multimath", 300,
               np.random.default_rng(1), 32, 0.5))


def test_a_problem_space_too_small_for_the_split_is_an_error() -> None:
    class Everything(HeldOut):
        def repeats(self, problem) -> bool:
            return True

    with pytest.raises(ValueError, match="too few distinct items"):
        draw_split("geo", 1, np.random.default_rng(0), 32, 0.0, avoid=Everything())


@pytest.mark.parametrize(("plan", "steps"), [
    ("x = 180 - 35 - 70", ["180 - 35 = 145", "145 - 70 = 75"]),
    ("x = 360 - 91 - 56 - 77", ["360 - 91 = 269", "269 - 56 = 213", "213 - 77 = 136"]),
    ("2 * (8 + 59)", ["8 + 59 = 67", "2 * 67 = 134"]),
    ("5 * (3 + 2 + 3)", ["3 + 2 = 5", "5 + 3 = 8", "5 * 8 = 40"]),
    ("2 + 3 * 4", ["3 * 4 = 12", "2 + 12 = 14"]),  # * before +
    ("4 / 8", ["4 / 8 = 1 / 2"]),
    ("11 / 12", []),  # already in lowest terms
    ("red: 4", []),
    ("total: 3 + 1 + 1", ["3 + 1 = 4", "4 + 1 = 5"]),
])
def test_plan_steps_hand_computed(plan: str, steps: list[str]) -> None:
    assert plan_steps(plan) == steps


def test_every_kind_steps_end_at_its_value() -> None:
    rng = np.random.default_rng(4)
    for subset in SUBSETS:
        for i in range(60):
            p = draw_problem(subset, rng, 32, kind_index=i)
            if p.steps:
                result = Fraction(*map(int, p.steps[-1].split(" = ")[-1].split(" / ")))
                assert result == _evaluate(p.plan), (p.plan, p.steps)
