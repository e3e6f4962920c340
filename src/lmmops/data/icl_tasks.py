"""ICL task families of the synthetic VQA data: tasks that can only be identified from demonstrations.

Every ICL item shows one coloured shape in one of four positions and asks the same generic question
(ICL_QUESTION). The *task* decides which attribute the answer names and in which lexicon:

    lexicon "en"     plain English words             red, circle, top left
    lexicon "code"   code words (disjoint from en)   alpha..delta, echo..hotel, india..lima
    lexicon "alias"  the en words, except two values crimson, lime; ring, box; northeast, southwest
                     per attribute that have words   for red, green; circle, square; top right, bottom left
                     of their own

giving 9 tasks named "icl/<attribute>/<lexicon>" (stored as the VQA `question_type`). A zero-shot model
can only guess the task. One demonstration identifies an "en" or "code" task by its attribute and
lexicon, except that "en" and "alias" share half their words: a demo whose value is a fixed point of the
alias lexicon (blue, yellow; triangle, cross; top left, bottom right) fits both, so those tasks need several
demos to disambiguate and the accuracy-vs-shots curve keeps rising after 1 shot. One telling demo ("red" or
"crimson" for a red image) settles it, and it is told by its words alone.

Why not a permutation of the en words (the "swap" lexicon of earlier versions: red<->green, circle<->square,
top right<->bottom left): there the twins share every word, and only comparing a demo's image with its answer
tells them apart. The embedded default model (0.8M parameters, 15 minutes on 2 cores) never learnt that in
any variant tried (lmmops.models.bootstrap): it guessed between the twins whatever the demos showed, and its
accuracy stayed flat from 1 to 8 shots. With the alias lexicon the same model reads the twin off the demos
(twin rate 0) and its accuracy rises with every shot count. The ambiguity, and so the Bayes-optimal curve
below, is the same as the swap lexicon's.

Use:
    from lmmops.data.icl_tasks import ICL_TASKS, ICL_QUESTION, get_icl_task
    task = get_icl_task("icl/colour/alias")
    task.answer(colour="red", shape="circle", position="top left")   # -> "crimson"
    task.vocabulary                                                    # -> ('blue', 'crimson', 'lime', 'yellow')
    render_icl_image("red", "circle", "top left", size=32)             # a PIL image, no jitter

The bootstrap builds ICL training episodes from the train split:
    pools = group_by_task(load_vqa(data_dir, "train"))   # {"icl/colour/en": [VQAItem, ...], ...}
then samples k demos + 1 query from one pool. Bayes-optimal accuracy with k random demos of the same
task (uniform attributes and tasks; Monte Carlo): 0-shot 21%, 1-shot 91.5%, 2-shot
96%, 4-shot 99%, 8-shot 99.9% (en and alias tasks 87% / 94% / 98.5% / 99.9%, code tasks 100% from 1 shot).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from lmmops.data.synthetic.scenes import COLOURS, POSITIONS, SHAPES, Scene, SceneObject, render_scene

if TYPE_CHECKING:
    from lmmops.data.schemas import VQAItem

ICL_QUESTION = "What is this?"
ICL_PREFIX = "icl/"
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position")
LEXICONS: tuple[str, ...] = ("en", "code", "alias")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS}

_CODE_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("alpha", "bravo", "charlie", "delta"),
    "shape": ("echo", "foxtrot", "golf", "hotel"),
    "position": ("india", "juliet", "kilo", "lima"),
}
# The "alias" lexicon: the en words, except for two values per attribute, which get words of their own (in no
# other lexicon); the other two values are its "fixed points", answered as in "en".
_ALIASES: dict[str, dict[str, str]] = {
    "colour": {"red": "crimson", "green": "lime"},
    "shape": {"circle": "ring", "square": "box"},
    "position": {"top right": "northeast", "bottom left": "southwest"},
}


@dataclass(frozen=True)
class ICLTask:
    """One rule: attribute value -> answer word(s)."""

    name: str
    attribute: str
    lexicon: str
    mapping: tuple[tuple[str, str], ...]  # (attribute value, answer), in ATTRIBUTE_VALUES order

    def answer_for_value(self, value: str) -> str:
        for v, a in self.mapping:
            if v == value:
                return a
        raise ValueError(f"{self.name}: {value!r} is not a {self.attribute} ({ATTRIBUTE_VALUES[self.attribute]})")

    def answer(self, colour: str, shape: str, position: str) -> str:
        """The answer for an image with one `colour` `shape` at `position`."""
        value = {"colour": colour, "shape": shape, "position": position}[self.attribute]
        return self.answer_for_value(value)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(sorted({a for _, a in self.mapping}))

    @property
    def fixed_points(self) -> tuple[str, ...]:
        """Attribute values this task answers like the same attribute's "en" task (ambiguous demos)."""
        return tuple(v for v, a in self.mapping if v == a) if self.lexicon != "code" else ()


def _build_tasks() -> tuple[ICLTask, ...]:
    tasks = []
    for attr in ATTRIBUTES:
        values = ATTRIBUTE_VALUES[attr]
        for lex in LEXICONS:
            if lex == "en":
                answers = values
            elif lex == "code":
                answers = _CODE_WORDS[attr]
            else:
                answers = tuple(_ALIASES[attr].get(v, v) for v in values)
            tasks.append(ICLTask(f"{ICL_PREFIX}{attr}/{lex}", attr, lex, tuple(zip(values, answers, strict=True))))
    return tuple(tasks)


ICL_TASKS: tuple[ICLTask, ...] = _build_tasks()
ICL_TASK_NAMES: tuple[str, ...] = tuple(t.name for t in ICL_TASKS)
# Every answer an ICL item can have (the words a tokenizer must cover).
ICL_VOCABULARY: tuple[str, ...] = tuple(sorted({a for t in ICL_TASKS for _, a in t.mapping}))


def get_icl_task(name: str) -> ICLTask:
    for t in ICL_TASKS:
        if t.name == name:
            return t
    raise KeyError(f"unknown ICL task {name!r}; tasks: {', '.join(ICL_TASK_NAMES)}")


def is_icl_task(question_type: str) -> bool:
    return question_type.startswith(ICL_PREFIX)


def tasks_sharing_vocabulary(name: str) -> tuple[str, ...]:
    """Other tasks whose answer words overlap with `name`'s (they confuse a 1-shot model)."""
    words = set(get_icl_task(name).vocabulary)
    return tuple(t.name for t in ICL_TASKS if t.name != name and words & set(t.vocabulary))


def group_by_task(items: Iterable[VQAItem]) -> dict[str, list[VQAItem]]:
    """ICL items by task name (in ICL_TASK_NAMES order; non-ICL items are left out): the per-task pools
    that episodes and per-task retrieval draw demonstrations from."""
    groups: dict[str, list[VQAItem]] = {name: [] for name in ICL_TASK_NAMES}
    for item in items:
        if item.question_type in groups:
            groups[item.question_type].append(item)
    return {name: pool for name, pool in groups.items() if pool}


def icl_scene(colour: str, shape: str, position: str, dx: int = 0, dy: int = 0,
              background: int = 245) -> Scene:
    return Scene(objects=(SceneObject(shape, colour, position, dx, dy),), background=background)


def render_icl_image(colour: str, shape: str, position: str, size: int = 32, dx: int = 0, dy: int = 0,
                     background: int = 245) -> Image.Image:
    """The image of an ICL item (what the generator writes, given the same jitter and background)."""
    return render_scene(icl_scene(colour, shape, position, dx, dy, background), size)
