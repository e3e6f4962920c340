"""The arithmetic of a figure problem's plan, written out as the equations a solver works one after another:
the worked steps of the multimodal reasoning traces (`FigureProblem.steps`), in the style of the text traces.

    from lmmops.data.synthetic.steps import plan_steps
    plan_steps("x = 180 - 35 - 70")   # ["180 - 35 = 145", "145 - 70 = 75"]
"""

from __future__ import annotations

import re
from fractions import Fraction

_TOKEN = re.compile(r"\d+|[-+*/()]")


def plan_steps(plan: str) -> list[str]:
    """The arithmetic of a plan as the equations a solver writes one after another: brackets first, then `*`
    and `/`, then `+` and `-`, left to right. "x = 180 - 35 - 70" -> ["180 - 35 = 145", "145 - 70 = 75"];
    "2 * (8 + 59)" -> ["8 + 59 = 67", "2 * 67 = 134"]; "4 / 8" -> ["4 / 8 = 1 / 2"] (a fraction already in
    lowest terms gives none); a single value ("red: 4") gives none. The text before the last `=` or `:` is a
    label."""
    tokens = _TOKEN.findall(re.split(r"[=:]", plan)[-1])
    steps: list[str] = []
    pos = 0

    def show(v: Fraction) -> str:
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator} / {v.denominator}"

    def atom() -> Fraction:
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "(":
            value = terms()
            pos += 1  # ")"
            return value
        return Fraction(int(token))

    def apply(left: Fraction, op: str, right: Fraction) -> Fraction:
        value = {"+": left + right, "-": left - right, "*": left * right, "/": left / right}[op]
        if op != "/" or value.denominator != right or value.numerator != left:  # k / n in lowest terms: no step
            steps.append(f"{show(left)} {op} {show(right)} = {show(value)}")
        return value

    def factors() -> Fraction:
        nonlocal pos
        value = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            value = apply(value, op, atom())
        return value

    def terms() -> Fraction:
        nonlocal pos
        value = factors()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            value = apply(value, op, factors())
        return value

    if tokens:
        terms()
    return steps
