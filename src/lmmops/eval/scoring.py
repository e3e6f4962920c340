# Over 500 lines: the format and accuracy scorers and the timeout pool that guards math-verify are one unit.
"""Rule-based scorers of LMM-R1 (docs/methods.md §8): format F, accuracy A and total R = 0.5 * F + A.

These are the scorers of record: the RL trainer calls them as rewards, and data validation and evaluation
call the same functions as checks and metrics (the reward is the metric on one sample).

- `format_reward(completion)`: 1.0 when the completion is exactly `<think>...</think><answer>...</answer>`.
- `accuracy_reward(completion, answer)`: math-verify equivalence of the prediction with the gold answer;
  None when the gold answer cannot be parsed (the row is skipped, never rewarded).
- `total_reward(completion, answer)`: 0.5 * format + accuracy; None when the gold cannot be parsed (the row
  is skipped, as for accuracy: it is never rewarded for its format alone).
- `verify_batch(completions, answers)`: accuracy for many rows at once, in parallel.
- `format_reward_fn`, `accuracy_reward_fn`, `total_reward_fn`: the TRL call shape
  `fn(prompts, completions, **columns) -> list[float | None]`; completions may be strings or chat lists.

Safety. math-verify protects itself with `signal.alarm`, which only works in the main thread and cannot
interrupt C code (a huge integer power inside sympy). Here every parse + verify runs in a small,
lazily created, reused process pool (`ProcessPoolExecutor`, "forkserver" context with math_verify
preloaded, "spawn" where forkserver does not exist) with a hard per-item deadline: an item past its
deadline gets 0.0, the pool's processes are killed and a fresh pool is started (a hung sympy cannot be
cancelled). Inputs are guarded before they reach sympy: only the last `MAX_SPAN_CHARS` characters of the
answer span are parsed and a span whose brace nesting is deeper than `MAX_BRACE_DEPTH` scores 0.0
without being parsed. So this module is safe to call from any thread of any process.

Decisions and departures from the reference (LMM-R1 / open-r1 reward code):
- A verification error or timeout gives 0.0 (the reference once rewarded 1.0 on a `verify` error).
- Whitespace: the format regex is applied exactly as in the reference, to the whole completion
  without stripping: leading or trailing whitespace (even one newline after `</answer>`) gives 0.0,
  and so does anything between `</think>` and `<answer>`. Whitespace inside the tags is free. We keep the
  reference's strictness so that rewards are comparable with the paper's; the system prompt shows the
  exact form.
- The prediction is the content of the last complete `<answer>...</answer>` span when there is one,
  else the whole completion (so a completion with a bad format can still be scored for accuracy, which
  the evaluation metrics need).
- Both gold and prediction are parsed with `[LatexExtractionConfig(boxed_match_priority=0),
  ExprExtractionConfig()]` and compared as `verify(gold, prediction)` (gold first: not symmetric).
- Multiple choice: math-verify parses `\\boxed{B}` but not a bare `B` or `(B)`. A gold answer or an
  answer span that is only a choice letter A-E (optionally in `$`, `\\boxed{}`, `\\text{}`, parentheses
  or followed by a period) is rewritten to `\\boxed{B}` before parsing, so letters verify the same way
  as any other answer (math-verify lower-cases symbols: `\\boxed{b}` also matches B).
- Bare formulas: a gold or answer span without any math anchor (`$`, `\\(`, `\\[`, `\\boxed`) and
  without prose words is wrapped in `$...$` first. Unwrapped, math-verify reads `2\\sqrt{3}` as 2 and
  `3\\pi/4` as 3 (DeepScaler-style golds are bare LaTeX); prose ("the answer is 5") is left as is.
- A gold answer whose parse holds no sympy expression (empty, or only math-verify's raw-string
  fallback; this includes a gold that times out inside math-verify or is nested deeper than the brace
  guard) gives None: the row is skipped and counted in `RewardStats.skipped`.
- math-verify's own signal timeouts inside the worker are set to max(1, timeout_s // 3) whole seconds
  per stage (gold parse, prediction parse, verify), so a merely slow item returns 0.0 without costing a
  pool restart; the hard deadline is the backstop for code a signal cannot interrupt.

Run the tests with `.venv/bin/python -m pytest tests/eval/test_scoring.py -q`; the throughput benchmark
with `.venv/bin/python benchmarks/rewards.py`.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_BRACE_DEPTH",
    "MAX_SPAN_CHARS",
    "RewardStats",
    "VerifierPool",
    "accuracy_reward",
    "accuracy_reward_fn",
    "answer_span",
    "completion_text",
    "format_reward",
    "format_reward_fn",
    "shutdown_verifier",
    "total_reward",
    "total_reward_fn",
    "verify_batch",
]

# Only the last MAX_SPAN_CHARS characters of the answer span reach the parser: real answers are short,
# and the final answer is at the end of a long rambling span.
MAX_SPAN_CHARS = 4_000
# math-verify's LaTeX parser is exponential in plain brace nesting ({{{{1}}}} at depth 8 already takes
# ~1 s); realistic answers nest \frac/\sqrt a handful of levels deep.
MAX_BRACE_DEPTH = 24
# Time allowed to start (or restart) the worker pool: imports of sympy on a loaded machine.
POOL_START_TIMEOUT_S = 120.0

FORMAT_RE = re.compile(r"^<think>(?:(?!</think>).)*</think><answer>(?:(?!</answer>).)*</answer>\Z", re.DOTALL)
_FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# A bare choice letter: "B", "(B)", "B.", "$B$", "\boxed{B}", "\text{(B)}", "\boxed{\textbf{B}}".
_CHOICE_RE = re.compile(
    r"^\$*\s*(?:\\boxed\s*\{\s*)?(?:\\(?:text|textbf|mathrm|mathbf)\s*\{\s*)?"
    r"\(?\s*([A-E])\s*\)?\s*\.?\s*\}?\s*\}?\s*\$*\.?$"
)
_ANCHOR_RE = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")
_WORD_RE = re.compile(r"[a-zA-Z]{2,}")


# --------------------------------------------------------------------------------------------------
# Text helpers


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, a chat message dict, or a chat list (TRL conversational).

    For a chat list the last assistant message is used (the last message when no role says assistant);
    a content that is a list of parts (`{"type": "text", "text": ...}`) is joined.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"]
        chosen = (assistant or messages or [{}])[-1]
        return _content_text(chosen.get("content", ""))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return ""


def answer_span(completion: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` span, or None when there is none.

    Uses rfind rather than a regex: a non-greedy regex is quadratic on a megabyte of unclosed tags.
    """
    end = completion.rfind("</answer>")
    if end < 0:
        return None
    start = completion.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return completion[start + len("<answer>") : end]


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == "}" and depth > 0:
            depth -= 1
    return deepest


def _normalize_choice(text: str) -> str:
    """Rewrite a bare multiple-choice letter to `\\boxed{X}` (math-verify parses that, not `(X)`)."""
    match = _CHOICE_RE.match(text.strip())
    return f"\\boxed{{{match.group(1)}}}" if match else text


def _wrap_bare_math(text: str) -> str:
    """Put `$...$` around a bare formula (no `$`, `\\(`, `\\[` or `\\boxed`, and no word of two or more
    letters once LaTeX commands are removed). Without an anchor, math-verify's plain-expression extractor
    reads `2\\sqrt{3}` as 2 and `3\\pi/4` as 3; prose ("the answer is 5") is left to the extractors."""
    if _ANCHOR_RE.search(text) or _WORD_RE.search(_COMMAND_RE.sub(" ", text)) or not text.strip():
        return text
    return f"${text.strip()}$"


def _guard(text: str) -> str | None:
    """The text that may be handed to sympy, or None when it is too deeply nested to parse safely."""
    text = text[-MAX_SPAN_CHARS:]
    if _brace_depth(text) > MAX_BRACE_DEPTH:
        return None
    return _wrap_bare_math(_normalize_choice(text))


# --------------------------------------------------------------------------------------------------
# Format


def format_reward(completion: str) -> float:
    """1.0 if the completion is `<think>...</think><answer>...</answer>` and nothing else, else 0.0.

    Exactly one of each of the four tags; nothing (not even whitespace) before `<think>`, between
    `</think>` and `<answer>`, or after `</answer>`. The regex is the reference's, applied as is.
    """
    if any(completion.count(tag) != 1 for tag in _FORMAT_TAGS):
        return 0.0
    return 1.0 if FORMAT_RE.match(completion) else 0.0


# --------------------------------------------------------------------------------------------------
# Verification in worker processes


@dataclass
class RewardStats:
    """Counts over verified rows, for the trainer's logs: rows seen, rows skipped (gold unparseable),
    rows cut by the hard deadline, rows rejected by the input guards, and worker errors."""

    rows: int = 0
    skipped: int = 0
    timeouts: int = 0
    guarded: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "skipped": self.skipped,
            "timeouts": self.timeouts,
            "guarded": self.guarded,
            "errors": self.errors,
        }


# Status codes returned by the worker.
_OK, _SKIP, _ERROR = "ok", "skip", "error"


def _extraction_config() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, inner_timeout: int) -> tuple[Any, ...]:
    # Cached per worker: a rollout has many samples (16 in the reference) per gold answer.
    from math_verify import parse

    return tuple(parse(gold, extraction_config=_extraction_config(), parsing_timeout=inner_timeout))


def _verify_in_worker(prediction: str, gold: str, inner_timeout: int) -> tuple[str, float | None]:
    """Runs in a worker process (main thread, so math-verify's own signal timeouts work there)."""
    try:
        from math_verify import parse, verify

        gold_parsed = list(_parse_gold(gold, inner_timeout))
        # Only string fallbacks (the extractor matched but sympy could not parse) is no gold either:
        # comparing raw strings would reward copying an unparseable label.
        if not any(not isinstance(g, str) for g in gold_parsed):
            return _SKIP, None
        if not prediction.strip():
            return _OK, 0.0
        pred_parsed = parse(prediction, extraction_config=_extraction_config(), parsing_timeout=inner_timeout)
        if not pred_parsed:
            return _OK, 0.0
        return _OK, 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout) else 0.0
    except BaseException:  # a verification error is a wrong answer, never a right one
        return _ERROR, 0.0


def _warm_worker() -> int:
    import logging
    import os

    from math_verify import parse, verify

    # math-verify logs a warning per internal timeout; in a rollout that is log spam, we count them.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    verify(parse("$\\frac{1}{2}$"), parse("0.5"))  # first-call compilation of the parser grammars
    return os.getpid()


def _mp_context() -> multiprocessing.context.BaseContext:
    # Not "fork": forking a process that holds threads (torch, the trainer) can deadlock. forkserver
    # with math_verify preloaded makes a restart after a kill take milliseconds instead of a re-import.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify", "lmmops.eval.scoring"])
        return ctx
    return multiprocessing.get_context("spawn")


class VerifierPool:
    """A few worker processes that run parse + verify with a hard deadline per item.

    At most `workers` items are in flight, so an item starts as soon as it is submitted and its
    deadline (submission + timeout_s) measures its own run time. When an item passes its deadline the
    whole pool is killed (a ProcessPoolExecutor cannot cancel a running call), the item scores 0.0, the
    other in-flight items are resubmitted to a fresh pool. An item whose worker dies otherwise (memory,
    segfault) is retried once, then scores 0.0.
    """

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def _ensure(self) -> ProcessPoolExecutor:
        if self._executor is None:
            executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=_mp_context())
            # Submitting `workers` tasks at once starts every worker now, so that no later item's
            # deadline pays for a process start.
            warmups = [executor.submit(_warm_worker) for _ in range(self.workers)]
            done, not_done = wait(warmups, timeout=POOL_START_TIMEOUT_S)
            if not_done or any(f.exception() is not None for f in done):
                self._kill(executor)
                raise RuntimeError("math verification worker pool failed to start")
            self._executor = executor
        return self._executor

    @staticmethod
    def _kill(executor: ProcessPoolExecutor) -> None:
        kill_workers = getattr(executor, "kill_workers", None)  # Python >= 3.14
        if kill_workers is not None:
            kill_workers()
            return
        # Before 3.14 the worker processes are only reachable through a private attribute.
        procs = list((getattr(executor, "_processes", None) or {}).values())
        for proc in procs:
            proc.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=5)

    def restart(self) -> None:
        if self._executor is not None:
            self._kill(self._executor)
            self._executor = None
            self.restarts += 1

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._kill(self._executor)
                self._executor = None

    def run(
        self, jobs: Sequence[tuple[str, str]], timeout_s: float, stats: RewardStats | None = None
    ) -> list[float | None]:
        """Verify (prediction, gold) pairs; returns 1.0/0.0, or None when the gold is unparseable."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        # math-verify's signal timeouts (whole seconds) for gold parse, prediction parse and verify,
        # sized to fit in the hard deadline so that a merely slow item does not cost a pool restart.
        inner = max(1, int(timeout_s // 3))
        results: list[float | None] = [0.0] * len(jobs)
        pending = deque(range(len(jobs)))
        attempts = [0] * len(jobs)
        with self._lock:
            inflight: dict[Future, tuple[int, float]] = {}
            while pending or inflight:
                executor = self._ensure()
                while pending and len(inflight) < self.workers:
                    i = pending.popleft()
                    attempts[i] += 1
                    fut = executor.submit(_verify_in_worker, jobs[i][0], jobs[i][1], inner)
                    inflight[fut] = (i, time.monotonic() + timeout_s)
                next_deadline = min(deadline for _, deadline in inflight.values())
                done, _ = wait(
                    list(inflight),
                    timeout=max(0.0, next_deadline - time.monotonic()),
                    return_when=FIRST_COMPLETED,
                )
                broken = False
                for fut in done:
                    i, _ = inflight.pop(fut)
                    try:
                        status, value = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if attempts[i] < 2:
                            pending.appendleft(i)
                        else:
                            results[i] = 0.0
                            if stats is not None:
                                stats.errors += 1
                        continue
                    results[i] = value
                    if stats is not None:
                        stats.skipped += status == _SKIP
                        stats.errors += status == _ERROR
                now = time.monotonic()
                expired = [fut for fut, (_, deadline) in inflight.items() if deadline <= now]
                for fut in expired:
                    i, _ = inflight.pop(fut)
                    results[i] = 0.0
                    if stats is not None:
                        stats.timeouts += 1
                if expired or broken:
                    # Survivors lose their worker with the pool: run them again, deadline reset.
                    for i, _ in inflight.values():
                        attempts[i] -= 1
                        pending.appendleft(i)
                    inflight.clear()
                    self.restart()
        return results


_POOL: VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> VerifierPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.workers != workers:
            if _POOL is not None:
                _POOL.close()
            _POOL = VerifierPool(workers)
        return _POOL


def shutdown_verifier() -> None:
    """Stop the shared worker pool (it restarts lazily on the next call). Registered at exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(shutdown_verifier)


# --------------------------------------------------------------------------------------------------
# Accuracy and total


def verify_batch(
    completions: Sequence[Any],
    answers: Sequence[str],
    *,
    timeout_s: float = 5.0,
    workers: int = 2,
    stats: RewardStats | None = None,
) -> list[float | None]:
    """Accuracy of each completion against its gold answer, verified in parallel worker processes.

    Returns 1.0 (equivalent), 0.0 (wrong, unparseable prediction, guard hit, error or timeout) or None
    (gold unparseable: skip the row). Each item gets at most `timeout_s` seconds of worker time.
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    jobs: list[tuple[str, str]] = []
    for completion, answer in zip(completions, answers, strict=True):
        text = completion_text(completion)
        span = answer_span(text)
        prediction = _guard(text if span is None else span)
        gold = _guard(str(answer))
        if gold is None:
            gold = ""  # parses to nothing: the row is skipped, like any unparseable gold
        if prediction is None:
            # Still sent (as empty) so that the gold decides between 0.0 and None: whether a row is
            # skipped must depend on its label only.
            prediction = ""
            if stats is not None:
                stats.guarded += 1
        jobs.append((prediction, gold))
    if stats is not None:
        stats.rows += len(jobs)
    if not jobs:
        return []
    return _pool(workers).run(jobs, timeout_s, stats)


def accuracy_reward(completion: str, answer: str, *, timeout_s: float = 5.0) -> float | None:
    """1.0 if the prediction verifies against the gold answer, 0.0 if not, None if the gold is unparseable."""
    return verify_batch([completion], [answer], timeout_s=timeout_s)[0]


def total_reward(completion: str, answer: str, *, timeout_s: float = 5.0) -> float | None:
    """R = 0.5 * format + accuracy; None (skip the row) when the gold answer cannot be parsed."""
    accuracy = accuracy_reward(completion, answer, timeout_s=timeout_s)
    if accuracy is None:
        return None
    return 0.5 * format_reward(completion) + accuracy


# --------------------------------------------------------------------------------------------------
# TRL call shape: fn(prompts, completions, **dataset_columns) -> list[float | None]


def format_reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Format reward for a batch; completions are strings or chat lists."""
    return [format_reward(completion_text(c)) for c in completions]


def accuracy_reward_fn(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **columns: Any
) -> list[float | None]:
    """Accuracy reward for a batch, `answer` being the dataset's gold column; None marks skipped rows."""
    return verify_batch(completions, answer)


def total_reward_fn(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **columns: Any
) -> list[float | None]:
    """Total reward 0.5 * F + A for a batch; None for a row whose gold cannot be parsed (skipped)."""
    formats = format_reward_fn(prompts, completions)
    accuracies = accuracy_reward_fn(prompts, completions, answer)
    return [None if a is None else 0.5 * (f or 0.0) + a for f, a in zip(formats, accuracies, strict=True)]
