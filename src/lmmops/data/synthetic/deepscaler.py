"""Synthetic DeepScaleR-style text reasoning rows: `problem`, `answer` (LaTeX), `solution`, `level`.

    from lmmops.data.synthetic.deepscaler import generate_deepscaler
    counts = generate_deepscaler(cfg.deepscaler, seed=cfg.seed, out=Path("data"))

Five difficulty levels, each with exact answers computed with fractions.Fraction:
1 one-step word problems (add/subtract a number up to 9 to/from one up to 20), 2 two-step word problems
(multiply then add/subtract, two-digit results),
3 fraction arithmetic, 4 linear equations, 5 quadratics and 2x2 linear systems.

Departure from DeepScaleR: its `solution` is a human-written solution ending in \\boxed{}; here it is a
short worked trace in the LMM-R1 completion format `<think>...</think><answer>$\\boxed{...}$</answer>`
(so the bootstrap can teach the format and RL starts above zero reward), and rows carry a `level`.
Every trace first restates what it uses: the word before each quantity ("has 17 and gets 4, so 17 + 4 = 21.")
or the equation, so a small model copies the numbers by induction (the word, then its number) before it
computes; with bare steps ("17 + 4 = 21.") the project's 0.8M default copied operands wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from lmmops.config import MathGenConfig
from lmmops.data import layout
from lmmops.data.synthetic.io import split_seed, write_jsonl

FAMILY_OFFSET = 202

NAMES = ("Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cards", "coins", "shells")


def latex(x: Fraction | int) -> str:
    """Exact LaTeX of a rational: 42, -3, \\frac{3}{4}, -\\frac{1}{2}."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def plain(x: Fraction | int) -> str:
    """Plain-text rational for the worked steps: 3/4, -2, 5."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def completion(steps: list[str], answer: str) -> str:
    """The LMM-R1 completion format (no whitespace between </think> and <answer>, as the reward's regex)."""
    return f"<think>{' '.join(steps)}</think><answer>$\\boxed{{{answer}}}$</answer>"


def term(coef: int, var: str, first: bool = False) -> str:
    """A linear term written as people do: 'x', '-x', '3x' first; '+ x', '- 3x' after."""
    mag = "" if abs(coef) == 1 else str(abs(coef))
    if first:
        return f"{'-' if coef < 0 else ''}{mag}{var}"
    return f"{'-' if coef < 0 else '+'} {mag}{var}"


def _ri(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (inclusive)."""
    return int(rng.integers(lo, hi + 1))


def level1(rng: np.random.Generator) -> tuple[str, Fraction, list[str]]:
    name, item = str(rng.choice(NAMES)), str(rng.choice(ITEMS))
    a, b = _ri(rng, 2, 20), _ri(rng, 1, 9)  # small numbers: the tier a small base model can solve (RL's start)
    if rng.random() < 0.5:
        problem = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return problem, Fraction(a + b), [f"has {a} and gets {b}, so {a} + {b} = {a + b}."]
    a = a + b  # keep the result positive
    problem = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
    return problem, Fraction(a - b), [f"has {a} and gives away {b}, so {a} - {b} = {a - b}."]


def level2(rng: np.random.Generator) -> tuple[str, Fraction, list[str]]:
    name, item = str(rng.choice(NAMES)), str(rng.choice(ITEMS))
    boxes, per, extra = _ri(rng, 2, 9), _ri(rng, 3, 12), _ri(rng, 1, 20)
    total = boxes * per
    if rng.random() < 0.5:
        problem = (f"{name} buys {boxes} boxes with {per} {item} in each box and already had {extra} {item}. "
                   f"How many {item} does {name} have in total?")
        steps = [f"buys {boxes} boxes with {per} in each, so {boxes} * {per} = {total}.",
                 f"had {extra}, so {total} + {extra} = {total + extra}."]
        return problem, Fraction(total + extra), steps
    extra = min(extra, total - 1)
    problem = (f"{name} packs {boxes} boxes of {per} {item} each and then uses {extra} of them. "
               f"How many {item} remain?")
    steps = [f"packs {boxes} boxes of {per} each, so {boxes} * {per} = {total}.",
             f"uses {extra}, so {total} - {extra} = {total - extra}."]
    return problem, Fraction(total - extra), steps


def level3(rng: np.random.Generator) -> tuple[str, Fraction, list[str]]:
    a, b = Fraction(_ri(rng, 1, 9), _ri(rng, 2, 12)), Fraction(_ri(rng, 1, 9), _ri(rng, 2, 12))
    op = str(rng.choice(["+", "-", "*"]))
    val = a + b if op == "+" else a - b if op == "-" else a * b
    sym = {"+": "+", "-": "-", "*": "\\cdot"}[op]
    problem = f"Compute ${latex(a)} {sym} {latex(b)}$. Give the answer as a fraction in lowest terms."
    given = f"{plain(a)} {op} {plain(b)}."
    if op == "*":
        steps = [given, f"Multiply numerators and denominators: {plain(a)} * {plain(b)} = {plain(val)}."]
    else:
        den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
        na, nb = a.numerator * (den // a.denominator), b.numerator * (den // b.denominator)
        steps = [given, f"Common denominator {den}: {na}/{den} {op} {nb}/{den}.", f"This simplifies to {plain(val)}."]
    return problem, val, steps


def level4(rng: np.random.Generator) -> tuple[str, Fraction, list[str]]:
    a = _ri(rng, 2, 9) * (1 if rng.random() < 0.8 else -1)
    x = Fraction(_ri(rng, -12, 12)) if rng.random() < 0.7 else Fraction(_ri(rng, -20, 20), _ri(rng, 2, 5))
    b = _ri(rng, -30, 30)
    c = a * x + b
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    problem = f"Solve for $x$: ${term(a, 'x', first=True)} {bs} = {latex(c)}$."
    move = f"Subtract {b} from both sides" if b >= 0 else f"Add {-b} to both sides"
    steps = [f"{term(a, 'x', first=True)} {bs} = {plain(c)}.", f"{move}: {a}x = {plain(c - b)}.",
             f"Divide by {a}: x = {plain(x)}."]
    return problem, x, steps


def level5(rng: np.random.Generator) -> tuple[str, Fraction, list[str]]:
    if rng.random() < 0.5:
        r1, r2 = _ri(rng, -9, 9), _ri(rng, -9, 9)
        s, p = r1 + r2, r1 * r2
        bs = f" {term(-s, 'x')}" if s != 0 else ""
        ps = f"+ {p}" if p >= 0 else f"- {-p}"
        problem = f"The equation $x^2{bs} {ps} = 0$ has roots $r$ and $s$. Find $r^2 + s^2$."
        val = Fraction(s * s - 2 * p)
        two_p = f"- {2 * p}" if p >= 0 else f"+ {-2 * p}"
        steps = [f"x^2{bs} {ps} = 0.", f"By Vieta, r + s = {s} and rs = {p}.",
                 f"r^2 + s^2 = (r + s)^2 - 2rs = {s * s} {two_p} = {val}."]
        return problem, val, steps
    x, y = _ri(rng, -9, 9), _ri(rng, -9, 9)
    a, b = _ri(rng, 1, 5), _ri(rng, 1, 5)
    c, d = _ri(rng, 1, 5), -_ri(rng, 1, 5)
    e, f = a * x + b * y, c * x + d * y
    det = a * d - b * c
    if det == 0:
        return level5(rng)
    problem = (f"If ${term(a, 'x', first=True)} {term(b, 'y')} = {e}$ and "
               f"${term(c, 'x', first=True)} {term(d, 'y')} = {f}$, what is $x \\cdot y$?")
    val = Fraction(x * y)
    given = f"{term(a, 'x', first=True)} {term(b, 'y')} = {e} and {term(c, 'x', first=True)} {term(d, 'y')} = {f}."
    steps = [given, f"Eliminate y: determinant {a}*({d}) - {b}*{c} = {det}.",
             f"x = {x} and y = {y}.", f"So x * y = {x * y}."]
    return problem, val, steps


LEVELS: dict[int, Callable[[np.random.Generator], tuple[str, Fraction, list[str]]]] = {
    1: level1, 2: level2, 3: level3, 4: level4, 5: level5,
}


def make_row(rng: np.random.Generator, level: int) -> dict:
    problem, value, steps = LEVELS[level](rng)
    answer = latex(value)
    return {"problem": problem, "answer": answer, "solution": completion(steps, answer), "level": level}


def generate_deepscaler(cfg: MathGenConfig, seed: int, out: Path,
                        progress: Callable[[int], None] = lambda n: None, *,
                        test_seed: int | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split_index, split in enumerate(layout.JSONL_SPLITS):
        rng = np.random.default_rng([split_seed(seed, test_seed, split), FAMILY_OFFSET, split_index])
        n = getattr(cfg, split)
        rows = []
        for i in range(n):
            rows.append(make_row(rng, 1 + i % 5))  # levels balanced, in a shuffled order below
            progress(1)
        rows = [rows[j] for j in rng.permutation(n)]
        counts[split] = write_jsonl(out / layout.jsonl_file(layout.DEEPSCALER_DIR, split), rows)
    return counts
