"""ICL prompt items, the shared text template and `PromptBatch` (processor tensors + token spans).

An in-context prompt is k demonstrations followed by one query. Every item is rendered with the same text
template for all families, `Question: {q} Short answer: {a}` (the query without answer ends at
`Short answer:`), items are separated by a newline, and an optional instruction line comes first. Each
model family puts its own image tokens in front of an item's text (see `lmmops.models.adapters`).

`PromptBatch` carries what the processor returned (input ids, attention mask, pixel values, ...) and,
per row, half-open token spans `[start, end)` into the padded `input_ids`:
  prefix  BOS and the instruction (empty span when there is neither),
  demos   the k demonstrations (empty for zero-shot),
  query   the query: its image tokens, question and, with `with_answer`, the answer,
  answer  the query's answer tokens only (None without `with_answer`).
Answer-only losses use `answer_mask` / `labels()`; MimIC-style alignment uses `query_mask`.

Run: built by `ModelAdapter.build_prompt(s)`; `python -m pytest tests/models -q` exercises it.

Departures from the references: the LIVE reference computes its LM loss over the whole sequence and the
student prompt lacks the inference instruction (docs/methods.md §5 names both as defects): here the answer span
is exact and the instruction is one argument shared by teacher, student and inference prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL.Image import Image

Span = tuple[int, int]


@dataclass(frozen=True)
class ICLItem:
    """One demonstration or query: an image (None only for text-only models), a question, an answer."""

    image: Image | None
    question: str
    answer: str | None = None


ItemLike = ICLItem | tuple[Any, ...]


def as_item(item: ItemLike) -> ICLItem:
    """Accept an `ICLItem` or a tuple `(image, question[, answer])`."""
    if isinstance(item, ICLItem):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return ICLItem(*item)
    raise TypeError(f"an ICL item is an ICLItem or a tuple (image, question[, answer]), got {item!r}")


def item_text(item: ICLItem, *, with_answer: bool) -> str:
    """`Question: {q} Short answer: {a}`; without the answer the text ends at `Short answer:`."""
    text = f"Question: {item.question.strip()} Short answer:"
    if with_answer:
        if item.answer is None:
            raise ValueError(f"item {item.question!r} has no answer but with_answer=True")
        text += f" {item.answer.strip()}"
    return text


def answer_char_start(text: str, item: ICLItem) -> int:
    """Character offset of the answer inside `item_text(item, with_answer=True)`."""
    assert item.answer is not None
    return len(text) - len(item.answer.strip())


def instruction_text(instruction: str | None) -> str:
    return f"{instruction.strip()}\n" if instruction else ""


SEPARATOR = "\n"


@dataclass
class PromptBatch:
    """Processor tensors for one or more prompts plus the token spans of each prompt's parts."""

    inputs: dict[str, Any]
    texts: list[str]
    prefix_spans: list[Span]
    demo_spans: list[Span]
    query_spans: list[Span]
    answer_spans: list[Span | None]
    padding_side: str = "left"

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def _only(self, spans: list[Any]) -> Any:
        if len(spans) != 1:
            raise ValueError(f"this batch holds {len(spans)} prompts; index the *_spans lists instead")
        return spans[0]

    @property
    def answer_span(self) -> Span | None:
        """The answer span of a single-prompt batch."""
        return self._only(self.answer_spans)

    @property
    def query_span(self) -> Span:
        return self._only(self.query_spans)

    @property
    def demo_span(self) -> Span:
        return self._only(self.demo_spans)

    @property
    def prefix_span(self) -> Span:
        return self._only(self.prefix_spans)

    def mask(self, spans: Sequence[Span | None]) -> torch.Tensor:
        """Bool mask (batch, seq) that is True inside the given per-row spans."""
        out = torch.zeros(self.input_ids.shape, dtype=torch.bool, device=self.input_ids.device)
        for row, span in enumerate(spans):
            if span is not None:
                out[row, span[0] : span[1]] = True
        return out

    @property
    def answer_mask(self) -> torch.Tensor:
        if any(s is None for s in self.answer_spans):
            raise ValueError("answer_mask needs prompts built with with_answer=True")
        return self.mask(self.answer_spans)

    @property
    def query_mask(self) -> torch.Tensor:
        return self.mask(self.query_spans)

    @property
    def demo_mask(self) -> torch.Tensor:
        return self.mask(self.demo_spans)

    def labels(self) -> torch.Tensor:
        """`input_ids` with -100 outside the answer spans (HF convention: the model shifts internally)."""
        return self.input_ids.masked_fill(~self.answer_mask, -100)

    def model_inputs(self) -> dict[str, Any]:
        """The keyword arguments of the model's forward/generate."""
        return dict(self.inputs)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PromptBatch:
        """Move tensors to `device`; cast floating tensors (pixel values) to `dtype` when given."""
        moved: dict[str, Any] = {}
        for key, value in self.inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype=dtype) if dtype and value.is_floating_point() else value.to(device)
            moved[key] = value
        return replace(self, inputs=moved)
