"""Official VQAv2 accuracy on hand-computed cases, and copy rate.

Each expected value is worked out by hand from the official rule: the prediction is always normalised
(whitespace, punctuation, number words, articles, contractions); the ten answers get the punctuation step
only when they disagree; acc_i = min(1, matches among the other nine / 3); mean over the ten."""

from __future__ import annotations

import pytest

from lmmops.eval.analysis import copy_rate
from lmmops.eval.metrics import mean_vqa_accuracy, normalize_answer, process_punctuation, vqa_accuracy


def ans(*groups: tuple[int, str]) -> list[str]:
    out = [a for n, a in groups for _ in range(n)]
    assert len(out) == 10
    return out


CASES = [
    # (prediction, answers, expected, why)
    ("yes", ans((10, "yes")), 1.0, "unanimous, exact"),
    ("Yes", ans((10, "yes")), 1.0, "unanimous answers: the prediction is still lower-cased"),
    ("YES!", ans((10, "yes")), 1.0, "unanimous: '!' becomes a space, then lower case and re-joined words"),
    ("two", ans((10, "2")), 1.0, "unanimous: number word in the prediction becomes 2"),
    ("the dog", ans((10, "dog")), 1.0, "unanimous: article dropped from the prediction"),
    ("Dog.", ans((10, "dog")), 1.0, "unanimous: period (not before a digit) stripped"),
    ("a dog", ans((10, "a dog")), 0.0, "unanimous answers are never normalised: 'dog' != 'a dog'"),
    ("yes", ans((10, "Yes")), 0.0, "unanimous answers keep their case"),
    (" yes\n", ans((10, "yes")), 1.0, "newline to space and strip happen always"),
    ("\tno\t", ans((10, "no")), 1.0, "tabs too"),
    ("2 dogs", ans((10, "2")), 0.0, "unanimous: '2 dogs' != '2'"),
    ("Yes", ans((3, "yes"), (7, "no")), 0.9, "split answers, capitalised prediction: 3 x 2/3 + 7 x 1"),
    ("The dog.", ans((5, "dog"), (5, "cat")), 1.0, "split: article and period dropped; 5 'dog'"),
    ("yes", ans((3, "yes"), (7, "no")), 0.9, "3 x 2/3 + 7 x 1"),
    ("no", ans((3, "yes"), (7, "no")), 1.0, "every leave-one-out subset has >= 3 'no'"),
    ("2", ans((2, "2"), (8, "3")), 0.6, "2 x 1/3 + 8 x 2/3"),
    ("dog", ans((1, "dog"), (9, "cat")), 0.3, "1 x 0 + 9 x 1/3"),
    ("two", ans((1, "two"), (9, "2")), 1.0, "number word in the prediction becomes 2"),
    ("Two", ans((9, "2"), (1, "3")), 1.0, "lower-case, then number word"),
    ("a dog", ans((5, "dog"), (5, "a dog")), 1.0, "article dropped from the prediction; 5 'dog' remain"),
    ("the dog", ans((5, "dog"), (5, "a dog")), 1.0, "any article"),
    ("dog", ans((5, "a dog"), (5, "cat")), 0.0, "ground truths get no article removal"),
    ("t-shirt", ans((4, "t-shirt"), (6, "shirt")), 1.0, "hyphen becomes a space on both sides: 't shirt'"),
    ("tshirt", ans((4, "t-shirt"), (6, "shirt")), 0.0, "'tshirt' != 't shirt'"),
    ("1,000", ans((5, "1,000"), (5, "1000")), 1.0, "digit,digit: punctuation removed -> all '1000'"),
    ("St. Louis", ans((5, "st. louis"), (5, "st louis")), 1.0, "period not before a digit is stripped"),
    ("2.5", ans((5, "2.5"), (5, "two")), 1.0, "period before a digit is kept"),
    ("dont", ans((5, "don't"), (5, "no")), 1.0, "contraction restored in the prediction"),
    ("none", ans((4, "0"), (6, "none")), 1.0, "'none' maps to 0"),
    ("zero", ans((4, "0"), (6, "none")), 1.0, "'zero' maps to 0"),
    ("dark red", ans((4, "red"), (3, "dark red"), (2, "maroon"), (1, "brown")), 0.9, "3 x 2/3 + 7 x 1"),
    ("maroon", ans((4, "red"), (3, "dark red"), (2, "maroon"), (1, "brown")), 0.6, "2 x 1/3 + 8 x 2/3"),
    ("brown", ans((4, "red"), (3, "dark red"), (2, "maroon"), (1, "brown")), 0.3, "1 x 0 + 9 x 1/3"),
    ("red", ans((4, "red"), (3, "dark red"), (2, "maroon"), (1, "brown")), 1.0, "4 'red': >= 3 in every subset"),
    ("yes?", ans((5, "yes"), (5, "yes?")), 1.0, "'?' becomes a space; re-joining the words drops it"),
    ("a", ans((5, "a"), (5, "b")), 0.0, "a prediction that is only an article becomes empty"),
]


@pytest.mark.parametrize(("prediction", "answers", "expected", "why"), CASES, ids=[c[3] for c in CASES])
def test_vqa_accuracy_hand_computed(prediction, answers, expected, why):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_punctuation_quirks():
    assert process_punctuation("yes?") == "yes "            # replaced by a space (no neighbouring space)
    assert process_punctuation("yes ?") == "yes "           # removed (a space next to it)
    assert process_punctuation("1,000 (approx)") == "1000 approx"  # a digit,digit anywhere: all removed
    assert process_punctuation("a.b.c") == "abc"
    assert process_punctuation("3.14") == "3.14"


def test_mean_and_errors():
    answers = [ans((10, "yes")), ans((3, "yes"), (7, "no"))]
    assert mean_vqa_accuracy(["yes", "yes"], answers) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])
    with pytest.raises(ValueError):
        mean_vqa_accuracy(["x"], [])


def test_normalize_answer():
    assert normalize_answer(" The Two dogs!\n") == "2 dogs"
    assert normalize_answer("isnt") == "isn't"


def test_copy_rate():
    preds = ["Dog", "cat", "2", "red"]
    demos = [["dog", "cow"], ["bird"], ["two"], []]
    assert copy_rate(preds, demos) == pytest.approx(2 / 4)  # Dog~dog, 2~two; zero-shot never copies
    assert copy_rate([], []) == 0.0
    with pytest.raises(ValueError):
        copy_rate(["a"], [])


def test_task_recognition_learning_hand_computed() -> None:
    from lmmops.eval.analysis import task_recognition_learning

    assert task_recognition_learning(0.62, 0.50) == pytest.approx({"TR": 0.50, "TL": 0.12})
    # wrong answers that help would make TL negative; it is reported as such, not clipped
    assert task_recognition_learning(0.40, 0.45) == pytest.approx({"TR": 0.45, "TL": -0.05})


def test_shot_gains_and_accuracy_by() -> None:
    from lmmops.eval.analysis import accuracy_by, shot_gains

    assert shot_gains({8: 0.70, 1: 0.40, 2: 0.55, 4: 0.65}) == pytest.approx({2: 0.15, 4: 0.10, 8: 0.05})
    assert shot_gains({4: 0.5}) == {}
    assert accuracy_by([1.0, 0.0, 1.0, 1.0], ["b", "a", "b", "a"]) == {"a": 0.5, "b": 1.0}
    with pytest.raises(ValueError, match="3 values for 2 keys"):
        accuracy_by([1.0, 0.0, 1.0], ["a", "b"])
