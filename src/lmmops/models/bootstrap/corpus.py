"""The training corpora of the bootstrap trainer: the data layer's train split, as the rows are drawn from it.

`load_corpora` reads one split (ICL items by task, ordinary VQA, DeepScaler) and adds the "describe" rows
(`describe_items`); the trainer adds generated DeepScaler rows (`extra_math_rows`), the arithmetic drill equations
(`drill_equations`) and the generated figures (`figures.figure_pools`), each from a random stream of its own.
`corpus_texts` is every text trained on (the word-level vocabulary is built from it); `reasoning_prompt` is the
prompt of record of a reasoning row, shared with `lmmops.evaluation.reasoning`.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmmops.data.icl_tasks import ICL_VOCABULARY
from lmmops.data.loaders import load_deepscaler, load_vqa, load_vqa_scenes
from lmmops.data.schemas import MathItem, VQAItem
from lmmops.data.synthetic.deepscaler import LEVELS, make_row
from lmmops.models.bootstrap.figures import FigurePools, reading_completion, reading_prompt, reasoning_completion
from lmmops.models.prompt import ICLItem, item_text


def reasoning_prompt(problem: str, *, with_image: bool = False) -> str:
    """The prompt of a reasoning row; the completion `<think>...</think><answer>...</answer>` follows directly."""
    return ("<image>" if with_image else "") + f"Question: {problem.strip()}\nAnswer:"


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class Corpora:
    """One split of the data layer, as the bootstrap uses it."""

    icl: dict[str, list[VQAItem]]  # ICL task name -> items
    vqa: list[VQAItem]  # ordinary VQA questions
    math: list[MathItem]  # DeepScaler rows
    figures: FigurePools = field(default_factory=lambda: FigurePools([], []))  # generated figures
    describe: list[VQAItem] = field(default_factory=list)  # attribute questions on the ICL images
    drill: list[str] = field(default_factory=list)  # arithmetic equations of the generator's traces


def describe_items(icl: dict[str, list[VQAItem]], scenes: dict[int, Any]) -> list[VQAItem]:
    """Plain attribute questions about each single-object ICL image, in the data layer's VQA wording.

    Why: the ICL answer depends on the image only through a task inferred from the demonstrations, so early
    in training the decoder learns the task's lexicon and ignores the image (loss stuck at ln 4). These
    0-shot questions ("What color is the circle?") supervise the vision path directly, like LLaVA's
    alignment data, and break that plateau. Labels come from the generator's scene sidecar.
    """
    out = []
    for item in (it for items in icl.values() for it in items):
        scene = scenes.get(item.image_id)
        if scene is None or len(scene.objects) != 1:
            continue
        o = scene.objects[0]
        questions = [(f"What color is the {o.shape}?", o.colour), (f"What shape is the {o.colour} object?", o.shape),
                     (f"Where is the {o.colour} {o.shape}?", o.position)]
        for k, (question, answer) in enumerate(questions):
            out.append(dataclasses.replace(item, question_id=-(item.question_id * 10 + k), question=question,
                                           question_type="describe", multiple_choice_answer=answer, answers=()))
    return out


def load_corpora(data_dir: Path, split: str) -> Corpora:
    vqa = load_vqa(data_dir, split)
    icl: dict[str, list[VQAItem]] = defaultdict(list)
    for item in vqa:
        if item.is_icl:
            icl[item.question_type].append(item)
    try:
        scenes = load_vqa_scenes(data_dir, split)
    except (OSError, ValueError):  # real VQA data has no scene sidecar: no describe rows
        scenes = {}
    return Corpora(
        icl=dict(sorted(icl.items())),
        vqa=[it for it in vqa if not it.is_icl],
        math=load_deepscaler(data_dir, split),
        describe=describe_items(icl, scenes),
    )


def _generated_rows(seed: int, stream: int, levels: Sequence[int], key: str) -> Iterator[dict[str, Any]]:
    """Rows of the data layer's DeepScaler generator, of `levels` in turn, from the random stream [seed, stream]
    (its own, so that the rows do not depend on how many others were drawn); `key` names the levels' setting."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"bootstrap.{key}: {list(levels)} must be a non-empty list of {sorted(LEVELS)}")
    rng = np.random.default_rng([seed, stream])
    for i in itertools.count():
        yield make_row(rng, levels[i % len(levels)])


def extra_math_rows(n: int, seed: int, exclude: set[str], levels: Sequence[int] = (1, 2, 3, 4, 5)) -> list[MathItem]:
    """`n` more DeepScaler-style rows of `levels` (in turn) from the data layer's generator (own seed;
    `exclude`d problems skipped)."""
    rows: list[MathItem] = []
    for i, row in enumerate(_generated_rows(seed, 9_001, levels, "extra_reasoning_levels"), start=1):
        if len(rows) >= n:
            break
        if row["problem"] not in exclude:
            rows.append(MathItem(f"extra:{i}", row["problem"], row["answer"], row["solution"], row["level"], "train"))
    return rows


# An integer equation of a worked solution: "8 + 7 = 15." (levels 1-2 write every step this way).
_EQUATION = re.compile(r"(?<![\w.])\d+ [-+*] \d+ = -?\d+\.")


def drill_equations(n: int, seed: int, levels: Sequence[int] = (1, 2)) -> list[str]:
    """`n` equations ("8 + 7 = 15.") taken in order from the worked solutions of freshly generated DeepScaler
    rows of `levels` (in turn; own seed): the arithmetic facts the traces need, at the generator's frequencies."""
    out: list[str] = []
    for i, row in enumerate(_generated_rows(seed, 9_002, levels, "arithmetic_drill_levels")):
        if len(out) >= n:
            break
        found = _EQUATION.findall(row["solution"] or "")
        if not found and not out and i >= len(levels):
            raise ValueError(f"bootstrap.arithmetic_drill_levels: the traces of levels {list(levels)} hold no "
                             f"integer equation to drill")
        out += found
    return out[:n]


def corpus_texts(corpora: Corpora) -> list[str]:
    """Every text the model trains on (the tokenizer's vocabulary comes from these)."""
    texts = [item_text(ICLItem(None, it.question, it.multiple_choice_answer), with_answer=True)
             for items in [corpora.vqa, corpora.describe, *corpora.icl.values()] for it in items]
    texts += [reasoning_prompt(r.problem) + (r.solution or "") for r in corpora.math]
    figures = corpora.figures
    texts += [reading_prompt().removeprefix("<image>") + reading_completion(f.problem) for f in figures.perception]
    texts += [reasoning_prompt(f.problem.question) + reasoning_completion(f.problem) for f in figures.reasoning]
    texts += list(ICL_VOCABULARY)
    return texts
