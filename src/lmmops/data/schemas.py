"""Typed records of the five dataset families, and the error every loader raises.

    from lmmops.data.loaders import load_vqa
    items: list[VQAItem] = load_vqa(Path("data"), "train")

Records are what the rest of lmmops consumes (ICL retrieval, bootstrap, RL, evaluation). Image paths
are absolute here (resolved by the loader); in the files they are relative to the data directory.
Fields mirror the public formats; where a record adds something (`split`, a derived `id`, `subset`),
the docstring says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmops.eval.sokoban import Level


class DataError(ValueError):
    """A data file problem, naming the file and, when known, the row (0-based), the item id and the field."""

    def __init__(self, file: str | Path, message: str, *, row: int | None = None, item_id: Any = None,
                 field: str | None = None):
        self.file, self.row, self.item_id, self.field, self.message = str(file), row, item_id, field, message
        where = [self.file]
        if row is not None:
            where.append(f"row {row}" + (f" (id {item_id})" if item_id is not None else ""))
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join([*where, message]))


@dataclass(frozen=True)
class VQAAnswer:
    answer: str
    answer_confidence: str  # "yes" | "maybe" | "no"
    answer_id: int


@dataclass(frozen=True)
class VQAItem:
    """One VQAv2 / OK-VQA question joined with its annotation (`split` is added by the loader)."""

    question_id: int
    image_id: int
    question: str
    question_type: str  # VQAv2: the question prefix ("what color is the"); synthetic ICL: "icl/<attr>/<lex>"
    answer_type: str  # "yes/no" | "number" | "other"
    multiple_choice_answer: str  # the most common annotator answer
    answers: tuple[VQAAnswer, ...]  # 10 in VQAv2 / OK-VQA
    image_path: Path
    split: str
    near_duplicate_of: int | None = None  # synthetic only: the train question_id this one copies

    @property
    def answer_strings(self) -> tuple[str, ...]:
        return tuple(a.answer for a in self.answers)

    @property
    def is_icl(self) -> bool:
        return self.question_type.startswith("icl/")


@dataclass(frozen=True)
class MathItem:
    """A DeepScaleR row. `id` is "<file>:<row>" unless the row has its own; `level` is synthetic only."""

    id: str
    problem: str
    answer: str  # LaTeX without delimiters: "42", "\\frac{3}{4}"
    solution: str | None
    level: int | None
    split: str


@dataclass(frozen=True)
class MultimodalItem:
    """A MultiMath / VerMulti row: an OpenAI-style chat `message` with image items, and a boxed `answer`.

    `images` are the message's image references resolved to files; `question` is the text of the user
    turns. `subset` is "multimath", "geo" or "perce_reason".
    """

    id: str
    subset: str
    split: str
    message: tuple[dict[str, Any], ...]
    images: tuple[Path, ...]
    question: str
    answer: str  # "$\\boxed{60}$", "$\\boxed{B}$"


@dataclass(frozen=True)
class SokobanItem:
    id: str
    grid: tuple[str, ...]  # XSB rows
    height: int
    width: int
    num_boxes: int
    solution: tuple[str, ...]  # "up" | "down" | "left" | "right"
    image_path: Path
    split: str
    message: tuple[dict[str, Any], ...] | None = None

    def level(self) -> Level:
        return Level.from_xsb("\n".join(self.grid))
