"""Tests for lmmops.eval.scoring: format, accuracy (math-verify in worker processes), total, TRL shape, safety.

Run: .venv/bin/python -m pytest tests/eval/test_scoring.py -q
"""

from __future__ import annotations

import threading
import time

import pytest

from lmmops.eval import scoring
from lmmops.eval.scoring import (
    RewardStats,
    VerifierPool,
    accuracy_reward,
    accuracy_reward_fn,
    answer_span,
    completion_text,
    format_reward,
    format_reward_fn,
    total_reward,
    total_reward_fn,
    verify_batch,
)


def wrap(answer: str, think: str = "reasoning") -> str:
    """A completion in the exact required format."""
    return f"<think>{think}</think><answer>{answer}</answer>"


# --------------------------------------------------------------------------------------------------
# format_reward

FORMAT_CASES = [
    # (completion, expected, why)
    ("<think>a</think><answer>b</answer>", 1.0, "minimal well-formed"),
    ("<think>\nstep 1\nstep 2\n</think><answer>\\boxed{3}</answer>", 1.0, "newlines inside think"),
    ("<think> a </think><answer> 42 </answer>", 1.0, "whitespace inside the tags is free"),
    ("<think></think><answer></answer>", 1.0, "empty contents still match the reference regex"),
    (" <think>a</think><answer>b</answer>", 0.0, "leading space: regex applied as is, no strip"),
    ("\n<think>a</think><answer>b</answer>", 0.0, "leading newline"),
    ("<think>a</think><answer>b</answer>\n", 0.0, "trailing newline after </answer> (\\Z)"),
    ("<think>a</think><answer>b</answer> ", 0.0, "trailing space"),
    ("<think>a</think> <answer>b</answer>", 0.0, "space between </think> and <answer>"),
    ("<think>a</think>\n<answer>b</answer>", 0.0, "newline between </think> and <answer>"),
    ("<think>a</think>so<answer>b</answer>", 0.0, "text between the blocks"),
    ("Sure! <think>a</think><answer>b</answer>", 0.0, "text before <think>"),
    ("<think>a</think><answer>b</answer>done", 0.0, "text after </answer>"),
    ("<think><think>a</think><answer>b</answer>", 0.0, "duplicated <think>"),
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0, "two answer blocks"),
    ("<think>a <answer>x</think><answer>b</answer>", 0.0, "<answer> opened inside think"),
    ("<think>a</think><answer>b</think></answer>", 0.0, "stray </think> inside the answer"),
    ("<think>a</think><answer>b <think></answer>", 0.0, "stray <think> inside the answer"),
    ("<answer>b</answer>", 0.0, "missing think block"),
    ("<think>a</think>", 0.0, "missing answer block"),
    ("<answer>b</answer><think>a</think>", 0.0, "blocks in the wrong order"),
    ("<think>a</think><answer>b", 0.0, "unclosed answer"),
    ("<THINK>a</THINK><ANSWER>b</ANSWER>", 0.0, "tags are case-sensitive"),
    ("", 0.0, "empty completion"),
    ("The answer is \\boxed{4}", 0.0, "no tags at all"),
]


@pytest.mark.parametrize(("completion", "expected", "why"), FORMAT_CASES, ids=[c[2] for c in FORMAT_CASES])
def test_format_reward(completion: str, expected: float, why: str) -> None:
    assert format_reward(completion) == expected, why


# --------------------------------------------------------------------------------------------------
# accuracy_reward

ACCURACY_CASES = [
    # (completion, gold, expected, why)
    (wrap("\\boxed{60}"), "$\\boxed{60}$", 1.0, "right boxed integer, reference-style gold"),
    (wrap("\\boxed{59}"), "$\\boxed{60}$", 0.0, "wrong boxed integer"),
    (wrap("60"), "$\\boxed{60}$", 1.0, "unboxed integer in the answer span"),
    ("So the answer is \\boxed{60}.", "60", 1.0, "no answer tags: the whole completion is parsed"),
    (wrap("\\boxed{59}", think="maybe \\boxed{60}"), "60", 0.0, "answer span wins over boxes in think"),
    (wrap("\\boxed{60}", think="first guess \\boxed{59}"), "60", 1.0, "a wrong box in think is ignored"),
    (wrap("\\boxed{0.5}"), "\\frac{1}{2}", 1.0, "decimal prediction vs fraction gold"),
    (wrap("\\boxed{\\frac{1}{2}}"), "0.5", 1.0, "fraction prediction vs decimal gold"),
    (wrap("\\boxed{\\dfrac{1}{2}}"), "1/2", 1.0, "dfrac vs slash fraction"),
    (wrap("\\boxed{0.333}"), "\\frac{1}{3}", 0.0, "too coarse a decimal is wrong"),
    (wrap("\\boxed{60}"), "60^\\circ", 1.0, "degrees in gold, plain in prediction"),
    (wrap("\\boxed{60^\\circ}"), "60", 1.0, "degrees in prediction, plain gold"),
    (wrap("\\boxed{-3}"), "-3", 1.0, "negative integer"),
    (wrap("\\boxed{1,000}"), "1000", 1.0, "thousands separator"),
    (wrap("\\boxed{\\frac{\\sqrt{2}}{2}}"), "\\frac{\\sqrt{2}}{2}", 1.0, "bare LaTeX gold is wrapped in $"),
    (wrap("2\\sqrt{3}"), "2\\sqrt{3}", 1.0, "bare LaTeX prediction is not read as just 2"),
    (wrap("\\boxed{2}"), "2\\sqrt{3}", 0.0, "2 is not 2*sqrt(3)"),
    (wrap("\\boxed{(x+1)^2}"), "x^2+2x+1", 1.0, "symbolic equivalence"),
    (wrap("\\boxed{C}"), "C", 1.0, "multiple choice: boxed letter vs bare letter gold"),
    (wrap("B"), "(B)", 1.0, "multiple choice: bare letter vs parenthesised gold"),
    (wrap("(B)"), "$\\boxed{B}$", 1.0, "multiple choice: parenthesised prediction"),
    (wrap("\\boxed{C}"), "B", 0.0, "multiple choice: wrong letter"),
    (wrap("D."), "D", 1.0, "multiple choice: trailing period"),
    (wrap("\\boxed{(-\\infty, 2]}"), "$x \\le 2$", 1.0, "verify(gold, pred): relation gold, interval pred"),
    (wrap("\\boxed{x \\le 2}"), "$(-\\infty, 2]$", 0.0, "verify is not symmetric: swapped roles fail"),
    (wrap("\\boxed{3}"), "$x=3$", 1.0, "assignment gold vs value"),
    (wrap("\\frac{"), "3", 0.0, "unparseable prediction"),
    (wrap(""), "3", 0.0, "empty answer span"),
    (wrap("I do not know"), "3", 0.0, "prose answer without a number"),
    (wrap("\\boxed{3}"), "hello world", None, "unparseable gold: skipped"),
    (wrap("\\boxed{3}"), "", None, "empty gold: skipped"),
    (wrap("???"), "???", None, "gold parses only to a string fallback: skipped, never rewarded"),
    ([{"role": "assistant", "content": wrap("\\boxed{7}")}], "7", 1.0, "chat-list completion"),
    (
        [{"role": "assistant", "content": [{"type": "text", "text": wrap("\\boxed{7}")}]}],
        "7",
        1.0,
        "chat-list completion with content parts",
    ),
]


@pytest.mark.parametrize(("completion", "gold", "expected", "why"), ACCURACY_CASES, ids=[c[3] for c in ACCURACY_CASES])
def test_accuracy_reward_cases(completion, gold: str, expected: float | None, why: str) -> None:
    assert verify_batch([completion], [gold]) == [expected], why


def test_accuracy_single_item_matches_batch() -> None:
    completions = [c[0] for c in ACCURACY_CASES]
    golds = [c[1] for c in ACCURACY_CASES]
    expected = [c[2] for c in ACCURACY_CASES]
    assert verify_batch(completions, golds, workers=2) == expected
    assert [accuracy_reward(completion_text(c), g) for c, g in zip(completions[:5], golds[:5], strict=True)] == (
        expected[:5]
    )


def test_total_reward() -> None:
    assert total_reward(wrap("\\boxed{4}"), "4") == 1.5  # format + right
    assert total_reward(wrap("\\boxed{5}"), "4") == 0.5  # format only
    assert total_reward("\\boxed{4}", "4") == 1.0  # right, bad format
    assert total_reward("no", "4") == 0.0
    assert total_reward(wrap("\\boxed{4}"), "hello world") is None  # unparseable gold: the row is skipped
    assert total_reward("no", "hello world") is None


def test_trl_call_shape_and_stats() -> None:
    prompts = [[{"role": "user", "content": "q"}]] * 4
    completions = [
        [{"role": "assistant", "content": wrap("\\boxed{4}")}],
        [{"role": "assistant", "content": "\\boxed{4}"}],
        wrap("\\boxed{5}"),
        wrap("\\boxed{4}"),
    ]
    answer = ["4", "4", "4", "hello world"]
    assert format_reward_fn(prompts, completions, answer=answer, extra_column=1) == [1.0, 0.0, 1.0, 1.0]
    assert accuracy_reward_fn(prompts, completions, answer=answer, trainer_state=None) == [1.0, 1.0, 0.0, None]
    assert total_reward_fn(prompts, completions, answer) == [1.5, 1.0, 0.5, None]
    stats = RewardStats()
    verify_batch(completions, answer, stats=stats)
    assert stats.as_dict() == {"rows": 4, "skipped": 1, "timeouts": 0, "guarded": 0, "errors": 0}


def test_helpers() -> None:
    assert answer_span("<think>x</think><answer>a</answer>") == "a"
    assert answer_span("<answer>a</answer> then <answer>b</answer>") == "b"  # the last complete span
    assert answer_span("<answer>unclosed") is None
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text({"role": "assistant", "content": "a"}) == "a"
    with pytest.raises(ValueError, match="completions"):
        verify_batch(["a"], ["1", "2"])
    assert verify_batch([], []) == []


def test_works_from_a_non_main_thread() -> None:
    # math-verify alone raises there (signal.alarm); the worker pool makes it safe.
    out: list[float | None] = []
    thread = threading.Thread(target=lambda: out.append(accuracy_reward(wrap("\\boxed{2}"), "2")))
    thread.start()
    thread.join(timeout=60)
    assert out == [1.0]


# --------------------------------------------------------------------------------------------------
# Hostile inputs: bounded time, reward 0, the verifier stays healthy

HOSTILE_CASES = [
    ("1 MB of prose", "word " * 200_000),
    ("1 MB inside the answer", wrap("9" * 1_000_000)),
    ("1 MB of unclosed tags", "<answer>" * 125_000),
    ("5000 nested braces", wrap("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}")),
    ("2000 nested braces (guard)", wrap("{" * 2000 + "1" + "}" * 2000)),
    ("power tower", wrap("\\boxed{9^{9^{9^{9}}}}")),
    ("huge factorial", wrap("\\boxed{(10^{10})!}")),
]


@pytest.mark.parametrize(("name", "completion"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_input_is_bounded(name: str, completion: str) -> None:
    start = time.monotonic()
    assert accuracy_reward(completion, "3") == 0.0
    assert time.monotonic() - start <= 5.0, name
    assert accuracy_reward(wrap("\\boxed{3}"), "3") == 1.0  # still healthy


def test_guard_is_counted() -> None:
    stats = RewardStats()
    assert verify_batch([wrap("{" * 100 + "1" + "}" * 100)], ["1"], stats=stats) == [0.0]
    assert stats.guarded == 1
    # A guarded prediction still lets the gold decide whether the row is skipped.
    assert verify_batch([wrap("{" * 100 + "1" + "}" * 100)], ["hello world"]) == [None]


def test_hard_deadline_kills_and_restarts_the_pool() -> None:
    # A deadline shorter than math-verify's own 1 s signal timeout: the worker is killed mid-sympy.
    pool = VerifierPool(workers=2)
    try:
        jobs = [("\\boxed{1}", "1"), ("\\boxed{9^{9^{9^{9}}}}", "3"), ("\\boxed{2}", "1"), ("\\boxed{1}", "1")]
        stats = RewardStats()
        start = time.monotonic()
        assert pool.run(jobs, timeout_s=0.5, stats=stats) == [1.0, 0.0, 0.0, 1.0]
        assert time.monotonic() - start < 5.0
        assert stats.timeouts == 1
        assert pool.restarts == 1
        assert pool.run([("\\boxed{5}", "5")], timeout_s=5.0) == [1.0]  # the fresh pool works
    finally:
        pool.close()


def test_pool_argument_checks() -> None:
    with pytest.raises(ValueError, match="workers"):
        VerifierPool(workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierPool(workers=1).run([("1", "1")], timeout_s=0)


def test_shutdown_and_lazy_restart() -> None:
    scoring.shutdown_verifier()
    assert accuracy_reward(wrap("\\boxed{8}"), "8") == 1.0
