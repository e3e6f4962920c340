"""Synthetic multimodal math in the MultiMath / VerMulti row format: a chat `message` with an image and an
exact `answer` in `$\\boxed{...}$`, where the values the answer needs are drawn in the image.

    from lmmops.data.synthetic.diagrams import generate_multimodal, draw_problem
    counts = generate_multimodal(cfg.multimodal, seed=cfg.seed, out=Path("data"))
    problem = draw_problem("geo", np.random.default_rng(0), size=32)   # one item in memory

A figure is a 2x2 grid of cells (at the default 32 px: 16 px cells, one per vision patch of the base model).
Numbers are written in cells with the bitmap font at twice its size; the other cells draw the object the
question is about (a triangle, a rectangle, shapes to count). Three subsets:
- multimath: area or perimeter of a rectangle from its written sides, the shaded fraction of a grid, the
  product of two written numbers;
- vermulti/geo: the third angle of a triangle, the third of three angles on a straight line, the fourth angle
  of a quadrilateral, from the angles written in the figure;
- vermulti/perce_reason: counting shapes by shape or colour and comparing counts, the total price of the shapes
  at a written price, evaluating a written expression.
About 40% of geo and perception rows are multiple choice (options A-D in the text, a letter answer).

The question text names the task, not the values: by default (`values_in_text_share` 0) only the image
gives them, so a model must read the figure; the share of items that also state them in the text is a
config option. Every item has a `key` (its kind and generating values): a held-out item never repeats a train
item's key, nor a question text whose train answers are all its answer (`generate_multimodal` redraws it), so
test measures reading and solving, not memory. `reading` is what the figure shows (e.g. "35 , 70"), the
target of the base model's perception rows and of its reading accuracy.

Rows: {"id", "message", "answer"}; `message` is a JSON *string* holding an OpenAI-style chat list, as in
the LMM-R1 data: [{"role": "user", "content": [{"type": "image", "image": <path relative to the data
directory>}, {"type": "text", "text": ...}]}]. The `id` key is an addition (real rows have none).
Departure from the real sets: toy figures with a 3x5 bitmap font, not scanned textbook figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lmmops.config import MultimodalMathGenConfig
from lmmops.data import layout
from lmmops.data.synthetic.deepscaler import latex
from lmmops.data.synthetic.draw import draw_shape, draw_text, text_size
from lmmops.data.synthetic.io import save_png, split_seed, write_jsonl
from lmmops.data.synthetic.scenes import COLOUR_RGB, COLOURS, SHAPES
from lmmops.data.synthetic.steps import plan_steps

FAMILY_OFFSET = 303
SUBSET_OFFSETS = {"multimath": 0, "geo": 10, "perce_reason": 20}
SUBSETS = tuple(SUBSET_OFFSETS)
INK = (20, 20, 20)
WHITE = (255, 255, 255)
RULE = (200, 200, 200)
LETTERS = "ABCD"
MC_SHARE = 0.4  # multiple-choice share of geo and perce_reason rows
MAX_DRAWS = 10_000  # redraws allowed per held-out item before the problem space counts as too small


@dataclass(frozen=True)
class FigureProblem:
    """One item: the figure, the question, the answer (a value or a letter) and what the figure shows."""

    kind: str
    image: Image.Image
    stem: str  # the question without its options
    answer: str
    reading: str  # the values drawn in the figure, in cell order ("35 , 70")
    plan: str  # how the answer follows from the reading, without the result ("x = 180 - 35 - 70")
    key: tuple[Hashable, ...]  # the kind and its generating values: equal keys draw the same figure
    options: tuple[str, ...] | None = None  # multiple choice: the four option texts

    @property
    def question(self) -> str:
        if self.options is None:
            return self.stem
        return self.stem + "\nChoices:\n" + "\n".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(self.options))

    @property
    def value(self) -> str:
        """The answer's value (for multiple choice: the text of the correct option)."""
        return self.answer if self.options is None else self.options[LETTERS.index(self.answer)]

    @property
    def steps(self) -> list[str]:
        """The plan worked out as equations, one operation each (see `plan_steps`)."""
        return plan_steps(self.plan)


def _ri(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


class _Figure:
    """A `size` x `size` white canvas seen as 2x2 cells (0 top left, 1 top right, 2 bottom left, 3 bottom right)."""

    def __init__(self, size: int):
        self.size, self.half = size, size // 2
        self.image = Image.new("RGB", (size, size), WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.line_width = max(1, size // 32)

    def origin(self, cell: int) -> tuple[int, int]:
        return (cell % 2) * self.half, (cell // 2) * self.half

    def write(self, cell: int, text: str) -> None:
        """`text` centred in `cell`, at the largest scale (up to size/16) that fits the cell."""
        scale = max(1, self.size // 16)
        while scale > 1 and text_size(text, scale)[0] > self.half - 1:
            scale -= 1
        w, h = text_size(text, scale)
        x0, y0 = self.origin(cell)
        draw_text(self.draw, text, x0 + (self.half - w) // 2, y0 + (self.half - h) // 2, scale, INK)
        if cell % 2 == 0:  # a faint rule on the right edge keeps two written numbers apart for a human reader
            self.draw.line([(x0 + self.half - 1, y0), (x0 + self.half - 1, y0 + self.half - 1)], fill=RULE)

    def shapes(self, cell: int, colour: str, shape: str, count: int) -> None:
        """`count` (1-4) equal shapes in the 2x2 slots of `cell`, in reading order."""
        slot = self.half // 2
        x0, y0 = self.origin(cell)
        side = max(4, slot - max(1, slot // 4))
        for k in range(count):
            sx, sy = x0 + (k % 2) * slot + (slot - side) // 2, y0 + (k // 2) * slot + (slot - side) // 2
            draw_shape(self.draw, shape, sx, sy, side, COLOUR_RGB[colour])

    def bottom_box(self) -> tuple[float, float, float, float]:
        """The bottom half, inset by one unit: where the object of the question is drawn."""
        u = self.size / 32
        return 1.5 * u, self.half + 1.5 * u, self.size - 2 * u, self.size - 2 * u


def _choices(rng: np.random.Generator, correct: int, distractors: list[int], unit: str) -> tuple[str, tuple[str, ...]]:
    """Four options (the correct one among 3 distinct positive distractors) and the correct letter."""
    pool = {d for d in distractors if d > 0 and d != correct}
    step = 1
    while len(pool) < 3:  # pad with nearby values when the distractors collapse
        pool |= {v for v in (correct + step, correct + 2 * step) if v != correct}
        step += 1
    picked = [int(v) for v in rng.choice(sorted(pool), size=3, replace=False)]
    options = [correct, *picked]
    options = [options[i] for i in rng.permutation(4)]
    return LETTERS[options.index(correct)], tuple(f"{v}{unit}" for v in options)


def _problem(rng: np.random.Generator, kind: str, fig: _Figure, stem: str, value: int | str, reading: str,
             plan: str, key: tuple[Hashable, ...], *, mc: list[int] | None = None, unit: str = "") -> FigureProblem:
    """The item; with `mc` distractors it is multiple choice with probability MC_SHARE."""
    if mc is not None and rng.random() < MC_SHARE:
        letter, options = _choices(rng, int(value), mc, unit)
        return FigureProblem(kind, fig.image, stem, letter, reading, plan, key, options)
    return FigureProblem(kind, fig.image, stem, str(value), reading, plan, key)


# ----------------------------------------------------------------------------------------------------
# geometry (VerMulti-Geo)


def _two_angles(rng: np.random.Generator, size: int, max_sum: int) -> tuple[int, int, _Figure]:
    """Two angles of 10-99 degrees summing to at most `max_sum`, written in the top cells of a new figure."""
    a, b = _ri(rng, 10, 99), _ri(rng, 10, 99)
    while a + b > max_sum:
        a, b = _ri(rng, 10, 99), _ri(rng, 10, 99)
    fig = _Figure(size)
    fig.write(0, str(a))
    fig.write(1, str(b))
    return a, b, fig


def geo_triangle(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    a, b, fig = _two_angles(rng, size, max_sum=170)
    x = 180 - a - b
    x0, y0, x1, y1 = fig.bottom_box()
    ta, tb = math.tan(math.radians(a)), math.tan(math.radians(b))
    apex = tb / (ta + tb)  # on a base from 0 to 1, where sides rising at a (left) and b (right) meet
    lo, hi = min(0.0, apex), max(1.0, apex)  # an obtuse base angle puts the apex beyond the base: fit the box
    at = [x0 + (x1 - x0) * (v - lo) / (hi - lo) for v in (0.0, 1.0, apex)]
    fig.draw.polygon([(at[0], y1), (at[1], y1), (at[2], y0)], outline=INK)
    stem = (f"Two angles of a triangle measure {a}° and {b}°. Find the third angle in degrees." if values_in_text
            else "The figure gives two angles of a triangle. Find the third angle in degrees.")
    return _problem(rng, "triangle", fig, stem, x, f"{a} , {b}", f"x = 180 - {a} - {b}", ("triangle", a, b),
                    mc=[180 - x, a + b, x + 10, x - 10, abs(a - b)], unit="°")


def geo_straight_line(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    a, b, fig = _two_angles(rng, size, max_sum=165)
    x = 180 - a - b
    x0, y0, x1, y1 = fig.bottom_box()
    cx, r = (x0 + x1) / 2, y1 - y0
    fig.draw.line([(x0, y1), (x1, y1)], fill=INK, width=fig.line_width)
    for ray in (180 - a, x):  # the rays between the three angles, counter-clockwise from the right
        t = math.radians(ray)
        fig.draw.line([(cx, y1), (cx + r * math.cos(t), y1 - r * math.sin(t))], fill=INK, width=fig.line_width)
    stem = (f"Three angles meet on a straight line; two measure {a}° and {b}°. Find the third angle in degrees."
            if values_in_text else
            "Three angles meet on a straight line and the figure gives two of them. Find the third angle in degrees.")
    return _problem(rng, "straight_line", fig, stem, x, f"{a} , {b}", f"x = 180 - {a} - {b}",
                    ("straight_line", a, b), mc=[180 - a, 180 - b, a + b, x + 10, x - 10], unit="°")


def geo_quadrilateral(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    while True:
        a, b, c = _ri(rng, 45, 99), _ri(rng, 45, 99), _ri(rng, 45, 99)
        x = 360 - a - b - c
        if 30 <= x <= 150:
            break
    fig = _Figure(size)
    for cell, v in enumerate((a, b, c)):
        fig.write(cell, str(v))
    ox, oy = fig.origin(3)
    h = fig.half
    skew = (a - 72) / 27 * 0.2 * h  # the drawn shape leans with the first angle
    fig.draw.polygon([(ox + 0.15 * h, oy + 0.85 * h), (ox + 0.85 * h, oy + 0.85 * h),
                      (ox + 0.7 * h + skew, oy + 0.15 * h), (ox + 0.3 * h + skew, oy + 0.2 * h)], outline=INK)
    stem = (f"Three angles of a quadrilateral measure {a}°, {b}° and {c}°. Find the fourth angle in degrees."
            if values_in_text else
            "The figure gives three angles of a quadrilateral. Find the fourth angle in degrees.")
    return _problem(rng, "quadrilateral", fig, stem, x, f"{a} , {b} , {c}", f"x = 360 - {a} - {b} - {c}",
                    ("quadrilateral", a, b, c), mc=[180 - x, x + 10, x - 10, 360 - x, a + b + c - 180], unit="°")


GEO_KINDS = (geo_triangle, geo_straight_line, geo_quadrilateral)


# ----------------------------------------------------------------------------------------------------
# perception + reasoning (VerMulti-PerceReason)

PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Every (colour, shape) pair, in a fixed order: the cells of a counting figure hold distinct pairs.
_PAIRS = [(c, s) for c in COLOURS for s in SHAPES]


def _shape_groups(rng: np.random.Generator, cells: int, lo: int, hi: int) -> list[tuple[str, str, int]]:
    """(colour, shape, count 1-4) for `cells` cells, `lo` to `hi` of them non-empty (empty cells have count 0).

    At most two groups by default use: a reading of two groups ("3 red squares , 2 blue circles") is about half
    as long as one of four, and a figure read right is then twice as likely (each group is a chance to err)."""
    picks = rng.choice(len(_PAIRS), size=cells, replace=False)
    counts = [_ri(rng, 0, 4) for _ in range(cells)]
    while not lo <= sum(c > 0 for c in counts) <= hi:
        counts = [_ri(rng, 0, 4) for _ in range(cells)]
    return [(*_PAIRS[int(p)], n) for p, n in zip(picks, counts, strict=True)]


def _group_reading(groups: list[tuple[str, str, int]]) -> str:
    return " , ".join(f"{n} {colour} {PLURAL[shape] if n > 1 else shape}" for colour, shape, n in groups if n)


def perce_count(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    groups = _shape_groups(rng, 4, lo=2, hi=2)
    fig = _Figure(size)
    for cell, (colour, shape, n) in enumerate(groups):
        fig.shapes(cell, colour, shape, n)
    present = [(c, s, n) for c, s, n in groups if n]
    reading = _group_reading(groups)
    key = ("count", *groups)
    said = f" The figure shows {reading}." if values_in_text else ""
    question = int(rng.integers(3))
    if question == 0:
        shape = str(rng.choice(sorted({s for _, s, _ in present})))
        n = sum(k for _, s, k in present if s == shape)
        terms = " + ".join(str(k) for _, s, k in present if s == shape)
        return _problem(rng, "count_shape", fig, f"How many {PLURAL[shape]} are there in the figure?{said}", n,
                        reading, f"{PLURAL[shape]}: {terms}", (*key, shape), mc=[n + 1, n + 2, n - 1, n + 3])
    if question == 1:
        colour = str(rng.choice(sorted({c for c, _, _ in present})))
        n = sum(k for c, _, k in present if c == colour)
        terms = " + ".join(str(k) for c, _, k in present if c == colour)
        return _problem(rng, "count_colour", fig, f"How many {colour} shapes are there in the figure?{said}", n,
                        reading, f"{colour}: {terms}", (*key, colour), mc=[n + 1, n + 2, n - 1, n + 3])
    (c1, s1, n1), (c2, s2, n2) = sorted(present, key=lambda g: -g[2])[:2]
    if n1 == n2:  # "how many more" needs a strict difference: ask for the total instead
        total = sum(k for _, _, k in present)
        return _problem(rng, "count_total", fig, f"How many shapes are there in the figure?{said}", total, reading,
                        "total: " + " + ".join(str(k) for _, _, k in present), (*key, "total"),
                        mc=[total + 1, total - 1, total + 2, total - 2])
    stem = f"How many more {c1} {PLURAL[s1]} than {c2} {PLURAL[s2]} are there in the figure?{said}"
    return _problem(rng, "count_difference", fig, stem, n1 - n2, reading, f"{n1} - {n2}", (*key, "difference"),
                    mc=[n1 + n2, n1 - n2 + 1, n1, n1 - n2 + 2])


def perce_price(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    price = _ri(rng, 2, 30)
    groups = _shape_groups(rng, 3, lo=1, hi=2)
    fig = _Figure(size)
    fig.write(0, str(price))
    for cell, (colour, shape, n) in enumerate(groups, start=1):
        fig.shapes(cell, colour, shape, n)
    count = sum(n for *_, n in groups)
    reading = f"{price} , {_group_reading(groups)}"
    stem = ("Every shape in the figure costs the price written in it. How much do all the shapes cost?"
            + (f" The price is {price} and the figure shows {_group_reading(groups)}." if values_in_text else ""))
    plan = f"{price} * (" + " + ".join(str(n) for *_, n in groups if n) + ")"
    return _problem(rng, "price", fig, stem, price * count, reading, plan, ("price", price, *groups),
                    mc=[price * (count + 1), price * (count - 1), price + count, price * (count + 2)])


def perce_expression(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    a, b = _ri(rng, 10, 99), _ri(rng, 10, 99)
    op = str(rng.choice(["+", "-"]))
    if op == "-" and b > a:
        a, b = b, a
    val = a + b if op == "+" else a - b
    fig = _Figure(size)
    fig.write(0, str(a))
    fig.write(1, op)
    fig.write(2, str(b))
    fig.write(3, "=")
    stem = (f"What is the value of the expression {a} {op} {b} written in the figure?" if values_in_text
            else "What is the value of the expression written in the figure?")
    return _problem(rng, "expression", fig, stem, val, f"{a} {op} {b}", f"{a} {op} {b}", ("expression", a, op, b),
                    mc=[a - b if op == "+" else a + b, val + 10, val - 1, val + 1])


PERCE_KINDS = (perce_count, perce_price, perce_expression)


# ----------------------------------------------------------------------------------------------------
# MultiMath-style


def mm_rectangle(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    w, h = _ri(rng, 2, 60), _ri(rng, 2, 60)
    fig = _Figure(size)
    fig.write(0, str(w))
    fig.write(1, str(h))
    x0, y0, x1, y1 = fig.bottom_box()
    k = min((x1 - x0) / w, (y1 - y0) / h)  # drawn in proportion
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fig.draw.rectangle((cx - w * k / 2, cy - h * k / 2, cx + w * k / 2, cy + h * k / 2), outline=INK)
    area = rng.random() < 0.5
    what = "area" if area else "perimeter"
    stem = (f"A rectangle is {w} wide and {h} high. What is its {what}?" if values_in_text else
            f"The figure gives the width (left) and the height (right) of a rectangle. What is its {what}?")
    value, plan = (w * h, f"{w} * {h}") if area else (2 * (w + h), f"2 * ({w} + {h})")
    return _problem(rng, what, fig, stem, value, f"{w} , {h}", plan, (what, w, h))


def mm_shaded_fraction(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    # The grid fills the figure and its lines fall on the 2x2 cells' edges, so each vision patch sees whole grid
    # cells (1, 2 or 4 of them) and the count is a sum over patches.
    cols, rows = int(rng.choice([2, 4])), int(rng.choice([2, 4]))
    n = cols * rows
    k = _ri(rng, 1, n - 1)
    shaded = tuple(sorted(int(i) for i in rng.choice(n, size=k, replace=False)))
    fig = _Figure(size)
    w, h = size // cols, size // rows
    for i in range(n):
        cx, cy = (i % cols) * w, (i // cols) * h
        fig.draw.rectangle((cx, cy, cx + w - 1, cy + h - 1), outline=INK,
                           fill=COLOUR_RGB["blue"] if i in shaded else WHITE)
    stem = "What fraction of the grid is shaded? Give the answer as a fraction in lowest terms."
    if values_in_text:
        stem = f"{k} of the {n} cells of the grid are shaded. " + stem
    return _problem(rng, "fraction", fig, stem, latex(Fraction(k, n)), f"{k} of {n}", f"{k} / {n}",
                    ("fraction", cols, rows, shaded))


def mm_product(rng: np.random.Generator, size: int, values_in_text: bool) -> FigureProblem:
    a, b = _ri(rng, 2, 60), _ri(rng, 2, 60)
    fig = _Figure(size)
    fig.write(0, str(a))
    fig.write(1, "x")
    fig.write(2, str(b))
    fig.write(3, "=")
    stem = f"Compute the product {a} x {b} shown in the figure." if values_in_text else \
        "Compute the product shown in the figure."
    return _problem(rng, "product", fig, stem, a * b, f"{a} x {b}", f"{a} * {b}", ("product", a, b))


MULTIMATH_KINDS = (mm_rectangle, mm_shaded_fraction, mm_product)
SUBSET_KINDS = {"multimath": MULTIMATH_KINDS, "geo": GEO_KINDS, "perce_reason": PERCE_KINDS}


def draw_problem(subset: str, rng: np.random.Generator, size: int = 32, *, values_in_text: bool = False,
                 kind_index: int | None = None) -> FigureProblem:
    """One item of `subset`: of kind `kind_index` (cycled) or a random kind."""
    kinds = SUBSET_KINDS[subset]
    index = int(rng.integers(len(kinds))) if kind_index is None else kind_index % len(kinds)
    return kinds[index](rng, size, values_in_text)


# ----------------------------------------------------------------------------------------------------
# rows and files


def chat_message(image_path: str, text: str) -> str:
    """The LMM-R1 `message` field: a JSON string of an OpenAI-style chat with one image item."""
    turn = {"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": text}]}
    return json.dumps([turn], ensure_ascii=False, sort_keys=True)


def make_row(problem: FigureProblem, item_id: str, image_path: str) -> dict:
    return {"id": item_id, "message": chat_message(image_path, problem.question),
            "answer": f"$\\boxed{{{problem.answer}}}$"}


def subset_plan(cfg: MultimodalMathGenConfig) -> list[tuple[str, str, str, int]]:
    """(family, subset, split, count) for every multimodal file, train first (held-out splits are drawn
    disjoint from it)."""
    return [
        ("multimath", "multimath", "train", cfg.multimath_train),
        ("multimath", "multimath", "test", cfg.multimath_test),
        ("vermulti", "geo", "train", cfg.geo_train),
        ("vermulti", "geo", "test", cfg.geo_test),
        ("vermulti", "perce_reason", "train", cfg.perce_reason_train),
        ("vermulti", "perce_reason", "test", cfg.perce_reason_test),
    ]


class HeldOut:
    """What a held-out item must not repeat: train keys and the answers train gives each question text."""

    def __init__(self) -> None:
        self.keys: set[tuple[Hashable, ...]] = set()
        self.text_answers: dict[str, set[str]] = {}

    def add(self, problem: FigureProblem) -> None:
        self.keys.add(problem.key)
        self.text_answers.setdefault(problem.question, set()).add(problem.answer)

    def repeats(self, problem: FigureProblem) -> bool:
        return problem.key in self.keys or self.text_answers.get(problem.question) == {problem.answer}


def draw_split(subset: str, n: int, rng: np.random.Generator, size: int, values_in_text_share: float,
               avoid: HeldOut | None = None) -> list[FigureProblem]:
    """`n` items of `subset`, kinds in turn, no key twice; none that repeats `avoid` (train) when given."""
    problems: list[FigureProblem] = []
    seen: set[tuple[Hashable, ...]] = set()
    for i in range(n):
        for _ in range(MAX_DRAWS):
            p = draw_problem(subset, rng, size, values_in_text=bool(rng.random() < values_in_text_share),
                             kind_index=i)
            if p.key not in seen and not (avoid is not None and avoid.repeats(p)):
                break
        else:
            raise ValueError(f"generate.multimodal: {subset} has too few distinct items for {n} per split")
        seen.add(p.key)
        problems.append(p)
    return problems


def generate_multimodal(cfg: MultimodalMathGenConfig, seed: int, out: Path,
                        progress: Callable[[int], None] = lambda n: None, *,
                        test_seed: int | None = None) -> dict[str, dict[str, int]]:
    """Write the three subsets; returns {"multimath": {"train": n, ...}, "vermulti_geo": ..., ...}."""
    counts: dict[str, dict[str, int]] = {}
    train: dict[str, HeldOut] = {}
    for family, subset, split, n in subset_plan(cfg):
        rng = np.random.default_rng([split_seed(seed, test_seed, split), FAMILY_OFFSET, SUBSET_OFFSETS[subset],
                                     layout.JSONL_SPLITS.index(split)])
        fam_dir = layout.multimodal_dir(family, None if family == "multimath" else subset)
        problems = draw_split(subset, n, rng, cfg.image_size, cfg.values_in_text_share,
                              avoid=None if split == "train" else train.get(subset, HeldOut()))
        if split == "train":
            train[subset] = HeldOut()
            for p in problems:
                train[subset].add(p)
        rows = []
        for i, problem in enumerate(problems):
            item_id = f"{subset}-{split}-{i:05d}"
            image_path = layout.image_file(fam_dir, split, item_id)
            save_png(out / image_path, problem.image)
            rows.append(make_row(problem, item_id, image_path))
            progress(1)
        key = "multimath" if family == "multimath" else f"vermulti_{subset}"
        counts.setdefault(key, {})[split] = write_jsonl(out / layout.jsonl_file(fam_dir, split), rows)
    return counts
