"""Synthetic multimodal math in the MultiMath / VerMulti row format: a chat `message` with an image and an
exact `answer` in `$\\boxed{...}$`.

    from lmmops.data.synthetic.diagrams import generate_multimodal
    counts = generate_multimodal(cfg.multimodal, seed=cfg.seed, out=Path("data"))

Three subsets, each with train/test JSONL files and PNG images (cfg.image_size, default 64x64):
- multimath: rectangle area/perimeter from labelled sides, shaded fraction of a grid (answers such as
  \\frac{3}{8}), reading a product written in the image;
- vermulti/geo: angles on a straight line, triangle angle sums, isosceles base angles, parallel lines
  cut by a transversal (which angle is asked is only visible in the diagram);
- vermulti/perce_reason: counting shapes by shape or colour and computing with the counts, reading an
  expression from the image and evaluating it.
About 40% of geo and perception rows are multiple choice (options A-D in the text, a letter answer).

Rows: {"id", "message", "answer"}; `message` is a JSON *string* holding an OpenAI-style chat list, as in
the LMM-R1 data: [{"role": "user", "content": [{"type": "image", "image": <path relative to the data
directory>}, {"type": "text", "text": ...}]}]. The `id` key is an addition (real rows have none).
Departure from the real sets: rendered toy diagrams with a 3x5 bitmap font, not scanned textbook figures.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
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

FAMILY_OFFSET = 303
SUBSET_OFFSETS = {"multimath": 0, "geo": 10, "perce_reason": 20}
INK = (20, 20, 20)
WHITE = (255, 255, 255)
LETTERS = "ABCD"

# A problem: (image, question text, answer value or letter, the value options for multiple choice or None)
Problem = tuple[Image.Image, str, str, list[str] | None]


def _ri(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), WHITE)
    return img, ImageDraw.Draw(img)


def _label(draw: ImageDraw.ImageDraw, text: str, cx: float, cy: float, scale: int, size: int) -> None:
    """Text centred at (cx, cy), kept inside the image."""
    w, h = text_size(text, scale)
    x = int(min(max(round(cx - w / 2), 0), size - w))
    y = int(min(max(round(cy - h / 2), 0), size - h))
    draw_text(draw, text, x, y, scale, INK)


def _polar(cx: float, cy: float, r: float, deg: float) -> tuple[float, float]:
    """A point at angle `deg` (counter-clockwise from +x, as in maths; image y grows downwards)."""
    return cx + r * math.cos(math.radians(deg)), cy - r * math.sin(math.radians(deg))


def _choices(rng: np.random.Generator, correct: int, distractors: list[int], unit: str) -> tuple[str, list[str]]:
    """Four options (the correct one among 3 distinct positive distractors) and the correct letter."""
    pool = {d for d in distractors if d > 0 and d != correct}
    step = 1
    while len(pool) < 3:  # pad with nearby values when the distractors collapse
        pool |= {v for v in (correct + step, correct + 2 * step) if v != correct}
        step += 1
    pool = sorted(pool)
    picked = [int(v) for v in rng.choice(pool, size=3, replace=False)]
    options = [correct, *picked]
    order = rng.permutation(4)
    options = [options[i] for i in order]
    letter = LETTERS[options.index(correct)]
    return letter, [f"{v}{unit}" for v in options]


def _maybe_mc(rng: np.random.Generator, image: Image.Image, text: str, correct: int, distractors: list[int],
              unit: str, mc_share: float = 0.4) -> Problem:
    if rng.random() < mc_share:
        letter, options = _choices(rng, correct, distractors, unit)
        return image, text, letter, options
    return image, text, str(correct), None


# ----------------------------------------------------------------------------------------------------
# geometry (VerMulti-Geo)


def geo_straight_line(rng: np.random.Generator, size: int) -> Problem:
    a = _ri(rng, 4, 16) * 10 + int(rng.choice([0, 5]))  # 40..165
    img, d = _canvas(size)
    s, sc = size, max(1, size // 64)
    vx, vy = 0.5 * s, 0.68 * s
    d.line([(0.06 * s, vy), (0.94 * s, vy)], fill=INK, width=sc)
    d.line([(vx, vy), _polar(vx, vy, 0.5 * s, a)], fill=INK, width=sc)
    _label(d, f"{a}°", *_polar(vx, vy, 0.2 * s, a / 2), sc, s)
    _label(d, "x", *_polar(vx, vy, 0.16 * s, (a + 180) / 2), sc, s)
    text = (f"In the figure, a ray meets a straight line and makes an angle of {a}°. "
            "What is the value of x in degrees?")
    x = 180 - a
    return _maybe_mc(rng, img, text, x, [a, 90 - x if x < 90 else x - 90, x + 10, x - 10, 360 - a], "°")


def _draw_triangle(d: ImageDraw.ImageDraw, size: int, a: float, b: float) -> tuple[tuple[float, float], ...]:
    """A triangle with angles a (left) and b (right) on a horizontal base; returns its vertices."""
    s = size
    ta, tb = math.tan(math.radians(a)), math.tan(math.radians(b))
    base = 0.8 * s
    h = base * ta * tb / (ta + tb)
    scale = min(1.0, 0.7 * s / h)  # keep tall triangles inside the image
    base, h = base * scale, h * scale
    x0, y0 = (s - base) / 2, 0.86 * s
    p0, p1, apex = (x0, y0), (x0 + base, y0), (x0 + h / ta, y0 - h)
    d.polygon([p0, p1, apex], outline=INK)
    return p0, p1, apex


def _inside(vertex: tuple[float, float], p: tuple[float, float], q: tuple[float, float],
            r: float) -> tuple[float, float]:
    """The point at distance r from `vertex` along the bisector of the angle p-vertex-q."""
    u = [p[0] - vertex[0], p[1] - vertex[1]]
    v = [q[0] - vertex[0], q[1] - vertex[1]]
    nu, nv = math.hypot(*u), math.hypot(*v)
    w = [u[0] / nu + v[0] / nv, u[1] / nu + v[1] / nv]
    nw = math.hypot(*w)
    return vertex[0] + r * w[0] / nw, vertex[1] + r * w[1] / nw


def geo_triangle_sum(rng: np.random.Generator, size: int) -> Problem:
    a = _ri(rng, 6, 16) * 5  # 30..80
    b = _ri(rng, 6, min(16, (130 - a) // 5)) * 5  # a + b <= 130: the apex angle is at least 50
    c = 180 - a - b
    img, d = _canvas(size)
    sc = max(1, size // 64)
    p0, p1, apex = _draw_triangle(d, size, a, b)
    r = 0.17 * size
    _label(d, f"{a}", *_inside(p0, p1, apex, r), sc, size)
    _label(d, f"{b}", *_inside(p1, p0, apex, r), sc, size)
    _label(d, "x", *_inside(apex, p0, p1, 0.12 * size), sc, size)
    text = f"In the triangle, two angles measure {a}° and {b}°. Find the third angle x in degrees."
    return _maybe_mc(rng, img, text, c, [180 - c, a + b, 90 - c if c < 90 else c - 90, c + 10, c - 10], "°")


def geo_isosceles(rng: np.random.Generator, size: int) -> Problem:
    apex_angle = _ri(rng, 25, 60) * 2  # even: integer base angles; wide enough to label
    base_angle = (180 - apex_angle) // 2
    img, d = _canvas(size)
    sc = max(1, size // 64)
    p0, p1, apex = _draw_triangle(d, size, base_angle, base_angle)
    _label(d, f"{apex_angle}", *_inside(apex, p0, p1, 0.14 * size), sc, size)
    _label(d, "x", *_inside(p0, p1, apex, 0.15 * size), sc, size)
    text = (f"The triangle is isosceles and its apex angle is {apex_angle}°. "
            "Find each base angle x in degrees.")
    return _maybe_mc(rng, img, text, base_angle,
                     [180 - apex_angle, apex_angle, 90 - apex_angle // 2 + 10, base_angle - 10], "°")


# Sectors at an intersection of a horizontal line with a transversal rising at angle t: the measure of
# each sector and the direction (degrees) of its bisector.
def _sectors(t: int) -> dict[str, tuple[int, float]]:
    return {
        "above right": (t, t / 2),
        "above left": (180 - t, (t + 180) / 2),
        "below left": (t, 180 + t / 2),
        "below right": (180 - t, (t + 180) / 2 + 180),
    }


def geo_parallel(rng: np.random.Generator, size: int) -> Problem:
    t = _ri(rng, 7, 15) * 5  # 35..75: the transversal's angle with the parallel lines
    img, d = _canvas(size)
    s, sc = size, max(1, size // 64)
    y_top, y_bot = 0.3 * s, 0.72 * s
    d.line([(0.04 * s, y_top), (0.96 * s, y_top)], fill=INK, width=sc)
    d.line([(0.04 * s, y_bot), (0.96 * s, y_bot)], fill=INK, width=sc)
    # the transversal crosses both lines; run it from below the bottom line to above the top one
    dx = (y_bot - y_top) / math.tan(math.radians(t))
    top = (0.5 * s + dx / 2, y_top)
    bot = (0.5 * s - dx / 2, y_bot)
    reach = 0.12 * s
    d.line([_polar(*bot, reach / math.sin(math.radians(t)), 180 + t),
            _polar(*top, reach / math.sin(math.radians(t)), t)], fill=INK, width=sc)
    sectors = _sectors(t)
    where = str(rng.choice(list(sectors)))
    x, direction = sectors[where]
    _label(d, f"{t}", *_polar(*top, 0.15 * s, sectors["above right"][1]), sc, s)
    _label(d, "x", *_polar(*bot, 0.13 * s, direction), sc, s)
    text = ("The two horizontal lines are parallel and are cut by a transversal. The marked angle at the "
            f"upper intersection is {t}°. What is the measure of angle x in degrees?")
    return _maybe_mc(rng, img, text, x, [180 - x, 90 - t, x + 10, 2 * t], "°")


GEO_KINDS = (geo_straight_line, geo_triangle_sum, geo_isosceles, geo_parallel)


# ----------------------------------------------------------------------------------------------------
# perception + reasoning (VerMulti-PerceReason)


def _shape_grid(rng: np.random.Generator, size: int, n: int) -> tuple[Image.Image, list[tuple[str, str]]]:
    """n shapes in distinct cells of a 4x4 grid; returns the image and (colour, shape) per object."""
    img, d = _canvas(size)
    cell = size // 4
    obj = max(4, round(cell * 0.7))
    objects = []
    for k in sorted(rng.choice(16, size=n, replace=False).tolist()):
        colour, shape = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
        x0 = (k % 4) * cell + (cell - obj) // 2
        y0 = (k // 4) * cell + (cell - obj) // 2
        draw_shape(d, shape, x0, y0, obj, COLOUR_RGB[colour])
        objects.append((colour, shape))
    return img, objects


PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


def perce_count(rng: np.random.Generator, size: int) -> Problem:
    img, objects = _shape_grid(rng, size, _ri(rng, 3, 10))
    shapes = Counter(s for _, s in objects)
    colours = Counter(c for c, _ in objects)
    kind = int(rng.integers(3))
    if kind == 0:
        shape = str(rng.choice(sorted(shapes)))
        n = shapes[shape]
        text = f"How many {PLURAL[shape]} are there in the image?"
        return _maybe_mc(rng, img, text, n, [n + 1, n + 2, n - 1, len(objects)], "")
    if kind == 1:
        colour = str(rng.choice(sorted(colours)))
        price = _ri(rng, 2, 9)
        val = colours[colour] * price
        text = f"Each {colour} shape costs {price} dollars. How much do all the {colour} shapes in the image cost?"
        return _maybe_mc(rng, img, text, val, [val + price, val - price, len(objects) * price, price], "")
    s1, s2 = (str(v) for v in rng.choice(SHAPES, size=2, replace=False))
    if shapes[s1] < shapes[s2]:
        s1, s2 = s2, s1
    val = shapes[s1] - shapes[s2]
    text = f"How many more {PLURAL[s1]} than {PLURAL[s2]} are there in the image?"
    return _maybe_mc(rng, img, text, val, [shapes[s1] + shapes[s2], val + 1, shapes[s1], val + 2], "")


def perce_read_expression(rng: np.random.Generator, size: int) -> Problem:
    a, b = _ri(rng, 2, 49), _ri(rng, 2, 49)
    op = str(rng.choice(["+", "-"]))
    if op == "-" and b > a:
        a, b = b, a
    val = a + b if op == "+" else a - b
    img, d = _canvas(size)
    sc = max(1, size // 32)
    _label(d, f"{a}{op}{b}", size / 2, size / 2, sc, size)
    text = "What is the value of the expression written in the image?"
    return _maybe_mc(rng, img, text, val, [a - b if op == "+" else a + b, val + 10, val - 1, val + 1], "")


PERCE_KINDS = (perce_count, perce_count, perce_read_expression)


# ----------------------------------------------------------------------------------------------------
# MultiMath-style


def mm_rectangle(rng: np.random.Generator, size: int) -> Problem:
    w, h = _ri(rng, 3, 15), _ri(rng, 2, 12)
    img, d = _canvas(size)
    s, sc = size, max(1, size // 64)
    # drawn proportions follow the side lengths (roughly), inside a 0.15..0.85 box
    k = 0.62 * s / max(w, h)
    x0, y0 = (s - w * k) / 2, (s - h * k) / 2
    d.rectangle((x0, y0, x0 + w * k, y0 + h * k), outline=INK, width=sc)
    _label(d, str(w), s / 2, y0 + h * k + 0.08 * s, sc, s)
    _label(d, str(h), x0 - 0.08 * s, s / 2, sc, s)
    text = "The side lengths of the rectangle are shown in the figure. What is its {}?"
    if rng.random() < 0.5:
        return img, text.format("area"), str(w * h), None
    return img, text.format("perimeter"), str(2 * (w + h)), None


def mm_shaded_fraction(rng: np.random.Generator, size: int) -> Problem:
    cols, rows = int(rng.choice([2, 3, 4])), int(rng.choice([2, 4]))
    n = cols * rows
    k = _ri(rng, 1, n - 1)
    img, d = _canvas(size)
    cell = (size * 0.8) / max(cols, rows)
    x0, y0 = (size - cols * cell) / 2, (size - rows * cell) / 2
    shaded = set(rng.choice(n, size=k, replace=False).tolist())
    for i in range(n):
        cx, cy = x0 + (i % cols) * cell, y0 + (i // cols) * cell
        d.rectangle((cx, cy, cx + cell, cy + cell), outline=INK,
                    fill=COLOUR_RGB["blue"] if i in shaded else WHITE)
    text = "What fraction of the grid is shaded? Give the answer as a fraction in lowest terms."
    return img, text, latex(Fraction(k, n)), None


def mm_product(rng: np.random.Generator, size: int) -> Problem:
    a, b = _ri(rng, 2, 12), _ri(rng, 2, 12)
    img, d = _canvas(size)
    _label(d, f"{a}x{b}", size / 2, size / 2, max(1, size // 32), size)
    return img, "Compute the product shown in the image.", str(a * b), None


MULTIMATH_KINDS = (mm_rectangle, mm_shaded_fraction, mm_product)
SUBSET_KINDS = {"multimath": MULTIMATH_KINDS, "geo": GEO_KINDS, "perce_reason": PERCE_KINDS}


# ----------------------------------------------------------------------------------------------------
# rows and files


def chat_message(image_path: str, text: str) -> str:
    """The LMM-R1 `message` field: a JSON string of an OpenAI-style chat with one image item."""
    turn = {"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": text}]}
    return json.dumps([turn], ensure_ascii=False, sort_keys=True)


def make_row(problem: Problem, item_id: str, image_path: str) -> dict:
    _, text, answer, options = problem
    if options is not None:
        text = text + "\nChoices:\n" + "\n".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(options))
    return {"id": item_id, "message": chat_message(image_path, text), "answer": f"$\\boxed{{{answer}}}$"}


def subset_plan(cfg: MultimodalMathGenConfig) -> list[tuple[str, str, str, int]]:
    """(family, subset, split, count) for every multimodal file."""
    return [
        ("multimath", "multimath", "train", cfg.multimath_train),
        ("multimath", "multimath", "test", cfg.multimath_test),
        ("vermulti", "geo", "train", cfg.geo_train),
        ("vermulti", "geo", "test", cfg.geo_test),
        ("vermulti", "perce_reason", "train", cfg.perce_reason_train),
        ("vermulti", "perce_reason", "test", cfg.perce_reason_test),
    ]


def generate_multimodal(cfg: MultimodalMathGenConfig, seed: int, out: Path,
                        progress: Callable[[int], None] = lambda n: None, *,
                        test_seed: int | None = None) -> dict[str, dict[str, int]]:
    """Write the three subsets; returns {"multimath": {"train": n, ...}, "vermulti_geo": ..., ...}."""
    counts: dict[str, dict[str, int]] = {}
    for family, subset, split, n in subset_plan(cfg):
        rng = np.random.default_rng([split_seed(seed, test_seed, split), FAMILY_OFFSET, SUBSET_OFFSETS[subset],
                                     layout.JSONL_SPLITS.index(split)])
        fam_dir = layout.multimodal_dir(family, None if family == "multimath" else subset)
        kinds = SUBSET_KINDS[subset]
        rows = []
        for i in range(n):
            problem = kinds[i % len(kinds)](rng, cfg.image_size)
            item_id = f"{subset}-{split}-{i:05d}"
            image_path = layout.image_file(fam_dir, split, item_id)
            save_png(out / image_path, problem[0])
            rows.append(make_row(problem, item_id, image_path))
            progress(1)
        key = "multimath" if family == "multimath" else f"vermulti_{subset}"
        counts.setdefault(key, {})[split] = write_jsonl(out / layout.jsonl_file(fam_dir, split), rows)
    return counts
