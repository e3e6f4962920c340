"""Synthetic VQA in the VQAv2 layout: questions + annotations JSON per split and COCO-named PNG images.

    from lmmops.data.synthetic.vqa import generate_vqa
    counts = generate_vqa(cfg.vqa, seed=cfg.seed, out=Path("data"))   # {"train": 1200, ...}

Three kinds of items per split (counts are questions):
- ICL items (cfg.icl_task_share of the non-duplicate items): one shape, the generic question
  ICL_QUESTION, an answer fixed by the task in `question_type` ("icl/<attribute>/<lexicon>", see
  lmmops.data.icl_tasks); all 10 annotators agree. Tasks are assigned round-robin, so they are balanced.
- Ordinary items: 1-4 shapes and sometimes a digit, 1-3 questions per image of six types (colour,
  shape, count, position, yes/no, text reading) with 10 annotators who mostly agree; some answer with a
  synonym ("round", "upper left") or wrongly, with answer_confidence yes/maybe/no.
- Near-duplicates (val/test only, cfg.near_duplicate_share): a train question copied with its answers
  onto the same scene shifted by a pixel and with a slightly different background; the annotation carries
  `near_duplicate_of` = the train question_id (an extra key that real VQAv2 does not have).

What each image shows is written to `vqa/synthetic_scenes_<subtype>.json` (a sidecar real data lacks).
Departures from VQAv2: one split-specific `image_id` range (train from 1, val from 1,000,001, test from
2,000,001), question_id = image_id * 1000 + k as in VQAv2, and a labelled test split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lmmops.config import VQAGenConfig
from lmmops.data import layout
from lmmops.data.icl_tasks import ICL_QUESTION, ICL_TASKS
from lmmops.data.synthetic.io import save_png, split_seed, write_json
from lmmops.data.synthetic.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Scene,
    SceneObject,
    SceneText,
    cell_geometry,
    render_scene,
)

FAMILY_OFFSET = 101  # mixed into the seed so that each family draws from its own stream
IMAGE_ID_BASE = {"train": 1, "val": 1_000_001, "test": 2_000_001}

INFO = {
    "description": "lmmops synthetic VQA written in the VQAv2 layout (rendered scenes, not COCO)",
    "url": "https://visualqa.org",
    "version": "2.0",
    "year": 2014,
    "contributor": "lmmops synthetic generator",
    "date_created": "2014-01-01 00:00:00",  # fixed: no timestamps in generated files
}
LICENSE = {"name": "Creative Commons Attribution 4.0 International License",
           "url": "http://creativecommons.org/licenses/by/4.0/"}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("dark red", "maroon"), "green": ("light green", "lime"), "blue": ("dark blue", "navy"),
    "yellow": ("gold", "orange"),
    "circle": ("round", "oval"), "square": ("box", "rectangle"), "triangle": ("triangular", "pyramid"),
    "cross": ("plus", "plus sign"),
    "top left": ("upper left", "left"), "top right": ("upper right", "right"),
    "bottom left": ("lower left", "left"), "bottom right": ("lower right", "right"),
}
# Digits that a careless annotator reads instead (look-alikes in the 3x5 font).
CONFUSABLE = {"0": ("8",), "1": ("7",), "2": ("7",), "3": ("8", "9"), "4": ("9",), "5": ("6",),
              "6": ("5", "8"), "7": ("1",), "8": ("3", "0"), "9": ("8",)}

QUESTION_KINDS = ("colour", "shape", "count", "position", "yesno", "text")


@dataclass
class QA:
    question: str
    question_type: str
    answer_type: str
    answers: list[dict]
    multiple_choice_answer: str
    near_duplicate_of: int | None = None


@dataclass
class VQAImage:
    scene: Scene
    qas: list[QA] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# annotators


_N_AGREE = np.array([10, 9, 8, 7, 6, 5, 4])
_P_AGREE = np.array([0.30, 0.25, 0.17, 0.12, 0.08, 0.05, 0.03])


def annotate(rng: np.random.Generator, canonical: str, synonyms: tuple[str, ...],
             wrongs: tuple[str, ...]) -> list[dict]:
    """Ten annotator answers where `canonical` is the strict majority (most agree, some disagree)."""
    for _ in range(20):
        n_agree = int(rng.choice(_N_AGREE, p=_P_AGREE))
        kinds = ["canonical"] * n_agree
        for _ in range(10 - n_agree):
            kinds.append("synonym" if synonyms and rng.random() < 0.5 else "wrong")
        order = rng.permutation(10)
        answers, confidences = [], []
        for i in order:
            kind = kinds[i]
            if kind == "canonical":
                answers.append(canonical)
                confidences.append(str(rng.choice(["yes", "maybe", "no"], p=[0.85, 0.12, 0.03])))
            elif kind == "synonym":
                answers.append(str(rng.choice(synonyms)))
                confidences.append(str(rng.choice(["yes", "maybe", "no"], p=[0.5, 0.4, 0.1])))
            else:
                answers.append(str(rng.choice(wrongs)))
                confidences.append(str(rng.choice(["yes", "maybe", "no"], p=[0.2, 0.4, 0.4])))
        counts = Counter(answers)
        if all(c < counts[canonical] for a, c in counts.items() if a != canonical):
            break
    else:  # pragma: no cover - 20 unlucky draws in a row; fall back to full agreement
        answers, confidences = [canonical] * 10, ["yes"] * 10
    return [{"answer": a, "answer_confidence": c, "answer_id": i + 1}
            for i, (a, c) in enumerate(zip(answers, confidences, strict=True))]


def unanimous(answer: str) -> list[dict]:
    return [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]


# ----------------------------------------------------------------------------------------------------
# scenes and questions


def _jitter(rng: np.random.Generator, size: int) -> tuple[int, int]:
    _, _, j = cell_geometry(size)
    return int(rng.integers(-j, j + 1)), int(rng.integers(-j, j + 1))


def _background(rng: np.random.Generator) -> int:
    return int(rng.integers(215, 256))


def icl_image(rng: np.random.Generator, task_index: int, size: int) -> VQAImage:
    task = ICL_TASKS[task_index]
    colour, shape, position = (str(rng.choice(COLOURS)), str(rng.choice(SHAPES)), str(rng.choice(POSITIONS)))
    dx, dy = _jitter(rng, size)
    scene = Scene(objects=(SceneObject(shape, colour, position, dx, dy),), background=_background(rng))
    answer = task.answer(colour, shape, position)
    qa = QA(ICL_QUESTION, task.name, "other", unanimous(answer), answer)
    return VQAImage(scene, [qa])


def _random_scene(rng: np.random.Generator, size: int) -> Scene:
    with_text = rng.random() < 0.2
    n_obj = int(rng.integers(0, 3)) if with_text else int(rng.integers(1, 5))
    cells = [POSITIONS[i] for i in rng.permutation(4)]
    objects = []
    for pos in cells[:n_obj]:
        dx, dy = _jitter(rng, size)
        objects.append(SceneObject(str(rng.choice(SHAPES)), str(rng.choice(COLOURS)), pos, dx, dy))
    text = None
    if with_text:
        dx, dy = _jitter(rng, size)
        text = SceneText(str(int(rng.integers(0, 10))), cells[n_obj], dx, dy)
    return Scene(tuple(objects), text, _background(rng))


def _others(value: str, pool: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in pool if v != value)


def _question(rng: np.random.Generator, scene: Scene, kind: str) -> QA | None:
    """A question of `kind` about `scene`, or None when the scene cannot support it unambiguously."""
    objs = scene.objects
    shape_counts = Counter(o.shape for o in objs)
    colour_counts = Counter(o.colour for o in objs)
    pair_counts = Counter((o.colour, o.shape) for o in objs)
    if kind == "colour":
        cands = [o for o in objs if shape_counts[o.shape] == 1]
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        ans = o.colour
        return QA(f"What color is the {o.shape}?", "what color is the", "other",
                  annotate(rng, ans, SYNONYMS[ans], _others(ans, COLOURS)), ans)
    if kind == "shape":
        cands = [o for o in objs if colour_counts[o.colour] == 1]
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        ans = o.shape
        return QA(f"What shape is the {o.colour} object?", "what shape is the", "other",
                  annotate(rng, ans, SYNONYMS[ans], _others(ans, SHAPES)), ans)
    if kind == "count":
        n = len(objs)
        wrongs = tuple(str(v) for v in (n - 1, n + 1) if v >= 0)
        return QA("How many shapes are there?", "how many", "number",
                  annotate(rng, str(n), (NUMBER_WORDS[n],), wrongs), str(n))
    if kind == "position":
        cands = [o for o in objs if pair_counts[(o.colour, o.shape)] == 1]
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        ans = o.position
        return QA(f"Where is the {o.colour} {o.shape}?", "where is the", "other",
                  annotate(rng, ans, SYNONYMS[ans], _others(ans, POSITIONS)), ans)
    if kind == "yesno":
        present = sorted(pair_counts)
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in pair_counts]
        if present and rng.random() < 0.5:
            colour, shape = present[int(rng.integers(len(present)))]
            ans = "yes"
        else:
            colour, shape = absent[int(rng.integers(len(absent)))]
            ans = "no"
        return QA(f"Is there a {colour} {shape}?", "is there a", "yes/no",
                  annotate(rng, ans, (), ("no" if ans == "yes" else "yes",)), ans)
    if kind == "text":
        if scene.text is None:
            return None
        ans = scene.text.value
        return QA("What number is written in the image?", "what number is", "number",
                  annotate(rng, ans, (NUMBER_WORDS[int(ans)],), CONFUSABLE[ans]), ans)
    raise ValueError(kind)


def ordinary_image(rng: np.random.Generator, size: int, max_questions: int) -> VQAImage:
    while True:
        scene = _random_scene(rng, size)
        kinds = [str(k) for k in rng.permutation(QUESTION_KINDS)]
        if scene.text is not None:  # a scene with text always asks to read it
            kinds.remove("text")
            kinds.insert(0, "text")
        want = min(int(rng.integers(1, 4)), max_questions)
        qas = []
        for kind in kinds:
            if len(qas) == want:
                break
            qa = _question(rng, scene, kind)
            if qa is not None:
                qas.append(qa)
        if qas:
            return VQAImage(scene, qas)


def near_duplicate(rng: np.random.Generator, scene: Scene, qa: QA, train_qid: int) -> VQAImage:
    """The same scene shifted by one pixel (some direction) with a slightly different background."""
    shifts = [(sx, sy) for sx in (-1, 0, 1) for sy in (-1, 0, 1) if (sx, sy) != (0, 0)]
    sx, sy = shifts[int(rng.integers(len(shifts)))]
    objects = tuple(replace(o, dx=o.dx + sx, dy=o.dy + sy) for o in scene.objects)
    text = replace(scene.text, dx=scene.text.dx + sx, dy=scene.text.dy + sy) if scene.text else None
    bg = int(np.clip(scene.background + int(rng.choice([-4, -3, -2, 2, 3, 4])), 200, 255))
    return VQAImage(Scene(objects, text, bg), [replace(qa, near_duplicate_of=train_qid)])


# ----------------------------------------------------------------------------------------------------
# splits and files


def build_split(rng: np.random.Generator, split: str, n: int, cfg: VQAGenConfig,
                train_pool: list[tuple[int, Scene, QA]]) -> list[VQAImage]:
    """The images of one split (n questions in all), in file order."""
    n_dup = round(n * cfg.near_duplicate_share) if split != "train" and train_pool else 0
    n_dup = min(n_dup, len(train_pool))
    n_icl = round((n - n_dup) * cfg.icl_task_share)
    n_ord = n - n_dup - n_icl
    images = [icl_image(rng, i % len(ICL_TASKS), cfg.image_size) for i in range(n_icl)]
    left = n_ord
    while left > 0:
        img = ordinary_image(rng, cfg.image_size, left)
        left -= len(img.qas)
        images.append(img)
    picks = sorted(rng.choice(len(train_pool), size=n_dup, replace=False).tolist()) if n_dup else []
    for j in picks:
        qid, scene, qa = train_pool[j]
        images.append(near_duplicate(rng, scene, qa, qid))
    return [images[i] for i in rng.permutation(len(images))]


def write_split(out: Path, split: str, images: list[VQAImage], size: int,
                progress: Callable[[int], None]) -> list[tuple[int, Scene, QA]]:
    """Write the questions, annotations, scene sidecar and images; return (qid, scene, qa) per question."""
    subtype = layout.vqa_subtype(split)
    questions, annotations, scenes, written = [], [], [], []
    for i, img in enumerate(images):
        image_id = IMAGE_ID_BASE[split] + i
        stem = layout.vqa_image_stem(subtype, image_id)
        save_png(out / f"{stem}.png", render_scene(img.scene, size))
        scenes.append({"image_id": image_id, "file": f"{stem}.png", **img.scene.to_json()})
        for k, qa in enumerate(img.qas):
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            ann = {
                "question_id": qid,
                "image_id": image_id,
                "question_type": qa.question_type,
                "answer_type": qa.answer_type,
                "multiple_choice_answer": qa.multiple_choice_answer,
                "answers": qa.answers,
            }
            if qa.near_duplicate_of is not None:
                ann["near_duplicate_of"] = qa.near_duplicate_of
            annotations.append(ann)
            written.append((qid, img.scene, qa))
        progress(len(img.qas))
    common = {"info": INFO, "license": LICENSE, "data_subtype": subtype, "data_type": "mscoco"}
    write_json(out / layout.vqa_questions_file(split),
               {**common, "task_type": "Open-Ended", "questions": questions})
    write_json(out / layout.vqa_annotations_file(split), {**common, "annotations": annotations})
    write_json(out / layout.vqa_scenes_file(split), {"data_subtype": subtype, "scenes": scenes})
    return written


def generate_vqa(cfg: VQAGenConfig, seed: int, out: Path,
                 progress: Callable[[int], None] = lambda n: None, *, test_seed: int | None = None) -> dict[str, int]:
    """Write the three splits under `out`; returns the number of questions per split. The test split
    draws from `test_seed` (default: `seed`), train and val from `seed`."""
    counts: dict[str, int] = {}
    train_pool: list[tuple[int, Scene, QA]] = []
    for split_index, split in enumerate(layout.VQA_SPLITS):
        rng = np.random.default_rng([split_seed(seed, test_seed, split), FAMILY_OFFSET, split_index])
        images = build_split(rng, split, getattr(cfg, split), cfg, train_pool)
        written = write_split(out, split, images, cfg.image_size, progress)
        if split == "train":
            train_pool = written  # what val/test near-duplicates copy
        counts[split] = len(written)
    return counts
