"""Benchmark of the rule-based rewards (lmmops.eval.scoring): verification throughput and hostile inputs.

Run: .venv/bin/python benchmarks/rewards.py [--prompts 12] [--samples 16] [--repeats 3]

Prints one table: completions verified per second for a realistic rollout mix (each prompt's gold
shared by `--samples` completions: right/wrong boxed integers, fractions vs decimals, multiple-choice
letters, malformed formats, prose), for
- in-process math-verify (the unsafe baseline: main thread only, no hard deadline),
- sequential single-item `accuracy_reward` calls (one worker round trip each),
- `verify_batch` with 1 and 2 workers,
- `format_reward` alone (pure regex),
each the fastest of `--repeats` runs, each run on a freshly drawn mix (no cross-run cache hits),
then the worst wall time over 3 runs of each hostile completion, and whether the next normal call still
returned the right answer. Timings depend on the machine (2 shared CPU cores when written).
"""

from __future__ import annotations

import argparse
import random
import time

from lmmops.eval.scoring import (
    RewardStats,
    _guard,
    accuracy_reward,
    answer_span,
    format_reward,
    shutdown_verifier,
    verify_batch,
)


def wrap(answer: str) -> str:
    return f"<think>Let me work it out step by step.</think><answer>{answer}</answer>"


def rollout_mix(prompts: int, samples: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(completions, golds, kinds) for `prompts` golds with `samples` completions each."""
    rng = random.Random(seed)
    golds = []
    for i in range(prompts):
        kind = i % 4
        if kind == 0:
            golds.append(f"$\\boxed{{{rng.randint(2, 999)}}}$")
        elif kind == 1:
            golds.append(f"\\frac{{1}}{{{rng.choice([2, 4, 5, 8])}}}")
        elif kind == 2:
            golds.append(rng.choice("ABCDE"))
        else:
            golds.append(f"{rng.randint(2, 9)}\\sqrt{{{rng.choice([2, 3, 5])}}}")
    completions, answers, kinds = [], [], []
    for gold in golds:
        for _ in range(samples):
            roll = rng.random()
            value = gold.strip("$").removeprefix("\\boxed{").removesuffix("}") if "boxed" in gold else gold
            if roll < 0.35:
                text, kind = wrap(f"\\boxed{{{value}}}"), "correct boxed"
            elif roll < 0.6:
                text, kind = wrap(f"\\boxed{{{rng.randint(2, 999)}}}"), "wrong boxed"
            elif roll < 0.7 and value.startswith("\\frac"):
                text, kind = wrap(f"\\boxed{{{1 / int(value[9:-1])}}}"), "decimal for fraction"
            elif roll < 0.8:
                text, kind = f"The answer is \\boxed{{{value}}}", "malformed format"
            elif roll < 0.9:
                text, kind = wrap(f"({rng.choice('ABCDE')})"), "choice letter"
            else:
                text, kind = wrap("I am not sure, maybe seven"), "prose"
            completions.append(text)
            answers.append(gold)
            kinds.append(kind)
    return completions, answers, kinds


def in_process(completions: list[str], answers: list[str]) -> list[float]:
    """The unsafe baseline: plain math-verify in this (main) thread, same extraction config."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    out = []
    for completion, gold in zip(completions, answers, strict=True):
        span = answer_span(completion)
        prediction = _guard(completion if span is None else span) or ""
        gold_parsed = parse(_guard(gold) or "", extraction_config=config)
        out.append(float(verify(gold_parsed, parse(prediction, extraction_config=config))))
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def measure(name: str, fn, mixes: list[tuple[list[str], list[str]]]) -> tuple[tuple[str, str, str], list]:
    """Run `fn(completions, answers)` once per mix (a fresh mix each run, so no run hits the parse caches
    of an earlier one); report the fastest run (the machine is shared) and return all results."""
    times, results = [], []
    for completions, answers in mixes:
        wall, result = timed(fn, completions, answers)
        times.append(wall)
        results.append(result)
    n, best = len(mixes[0][0]), min(times)
    return (name, f"{n / best:,.0f}", f"{best:.3f}"), results


HOSTILE = {
    "1 MB of prose": "word " * 200_000,
    "1 MB inside <answer>": wrap("9" * 1_000_000),
    "5,000 nested braces": wrap("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"),
    "2,000 nested braces (guard)": wrap("{" * 2000 + "1" + "}" * 2000),
    "\\boxed{9^{9^{9^{9}}}}": wrap("\\boxed{9^{9^{9^{9}}}}"),
    "\\boxed{(10^{6})!}": wrap("\\boxed{(10^{6})!}"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="throughput rows show the fastest run")
    args = parser.parse_args()
    mixes = [rollout_mix(args.prompts, args.samples, seed=r)[:2] for r in range(args.repeats)]
    n = len(mixes[0][0])

    startup, _ = timed(verify_batch, ["1"], ["1"], workers=2)
    rows, results = [], {}

    def regex(completions: list[str], answers: list[str]) -> list[float]:
        return [format_reward(c) for c in completions]

    def sequential(completions: list[str], answers: list[str]) -> list[float | None]:
        return [accuracy_reward(c, a) for c, a in zip(completions, answers, strict=True)]

    def batch(workers: int):
        verify_batch(["1"], ["1"], workers=workers)  # a new worker count replaces the pool: start it untimed
        return lambda completions, answers: verify_batch(completions, answers, workers=workers)

    for name, fn in [
        ("format_reward (regex only)", regex),
        ("in-process math-verify (unsafe baseline)", in_process),
        ("sequential accuracy_reward (pool, 1 at a time)", sequential),
        ("verify_batch, 1 worker", batch(1)),
        ("verify_batch, 2 workers", batch(2)),
    ]:
        row, results[name] = measure(name, fn, mixes)
        rows.append(row)
    stats = RewardStats()
    for completions, answers in mixes:
        verify_batch(completions, answers, workers=2, stats=stats)
    pooled = [results[name] for name, *_ in rows[2:]]
    baseline = [[float(x or 0.0) for x in run] for run in pooled[0]]
    agree = all(p == pooled[0] for p in pooled) and baseline == results[rows[1][0]]
    b2 = [x for run in pooled[-1] for x in run]

    print(
        f"Reward verification: {args.repeats} fresh mixes of {n} completions ({args.prompts} golds x "
        f"{args.samples} samples), mean accuracy {sum(x or 0.0 for x in b2) / len(b2):.3f}, "
        f"all modes agree: {agree}"
    )
    print(f"pool start (2 workers, forkserver + warm-up): {startup:.2f} s; stats {stats.as_dict()}")
    print()
    print(f"| {'mode':<48} | {'completions/s':>13} | {'wall s':>7} |")
    print(f"|{'-' * 50}|{'-' * 15}|{'-' * 9}|")
    for name, rate, wall in rows:
        print(f"| {name:<48} | {rate:>13} | {wall:>7} |")
    print()
    header = ("hostile completion (gold 3)", "reward", "worst wall s (3 runs)", "next call ok")
    print(f"| {header[0]:<30} | {header[1]:>6} | {header[2]:>21} | {header[3]:>12} |")
    print(f"|{'-' * 32}|{'-' * 8}|{'-' * 23}|{'-' * 14}|")
    for name, completion in HOSTILE.items():
        worst, rewards_seen, healthy = 0.0, set(), True
        for _ in range(3):
            wall, reward = timed(accuracy_reward, completion, "3")
            worst = max(worst, wall)
            rewards_seen.add(reward)
            healthy = healthy and accuracy_reward(wrap("\\boxed{3}"), "3") == 1.0
        shown = ",".join(str(r) for r in sorted(rewards_seen, key=str))
        print(f"| {name:<30} | {shown:>6} | {worst:>21.3f} | {healthy!s:>12} |")
    shutdown_verifier()


if __name__ == "__main__":  # required: worker processes re-import this file as __mp_main__
    main()
