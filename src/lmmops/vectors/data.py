"""What the LIVE / MimIC training loop reads at each step: query batches, random demonstrations, images.

`DemoPool(items)` holds one task's training queries (VQAItems with unique question ids and an answer) and
turns them into prompt items (`ICLItem`: image, question, answer), opening images lazily (LRU-cached).
`sample_step(question_ids, batch_size=..., shots=..., seed=..., step=...)` says which queries a step trains
on and which demonstrations each one gets; it depends only on (seed, step), so a resumed run sees exactly
the data an uninterrupted run would:

  queries  epoch-wise: a permutation of the pool seeded by (seed, epoch), cut into batches of `batch_size`
           (the last batch of an epoch may be smaller), so every query is read once per epoch;
  demos    for each query, `shots` items drawn uniformly WITH replacement from the pool minus the query
           (every item with the query's question id), seeded by (seed, step): re-drawn every time the query
           is read, never the query itself (docs/methods.md §5-6).

Run: used by `lmmops.vectors.train`; `python -m pytest tests/vectors/test_train.py -q`.

Departures from the references: none in the sampling rule; the references draw from a global RNG, here each
step's draws are a pure function of (seed, step) so that checkpoints resume bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from lmmops.data.schemas import VQAItem
from lmmops.models import ICLItem


@dataclass(frozen=True)
class Draw:
    """One training prompt of a step: the query's index in the pool and its demonstrations' indices."""

    query: int
    demos: tuple[int, ...]


def steps_per_epoch(pool_size: int, batch_size: int) -> int:
    return math.ceil(pool_size / batch_size)


def query_batch(pool_size: int, *, batch_size: int, seed: int, step: int) -> list[int]:
    """Pool indices of the queries of `step`: batch `step mod steps_per_epoch` of the epoch's permutation."""
    per_epoch = steps_per_epoch(pool_size, batch_size)
    epoch, b = divmod(step, per_epoch)
    order = np.random.default_rng([seed, 0, epoch]).permutation(pool_size)
    return [int(i) for i in order[b * batch_size : (b + 1) * batch_size]]


def draw_demos(rng: np.random.Generator, question_ids: np.ndarray, query: int, shots: int) -> tuple[int, ...]:
    """`shots` pool indices drawn uniformly with replacement among the items whose id is not the query's."""
    candidates = np.flatnonzero(question_ids != question_ids[query])
    if shots > 0 and len(candidates) == 0:
        raise ValueError(f"no demonstration candidates for query {int(question_ids[query])}: the pool has no "
                         f"other item")
    return tuple(int(candidates[j]) for j in rng.integers(len(candidates), size=shots))


def sample_step(question_ids: Sequence[int], *, batch_size: int, shots: int, seed: int, step: int) -> list[Draw]:
    """The prompts of one training step (module docstring): a function of (seed, step) and the pool only."""
    ids = np.asarray(question_ids)
    rng = np.random.default_rng([seed, 1, step])
    return [Draw(q, draw_demos(rng, ids, q, shots)) for q in query_batch(len(ids), batch_size=batch_size,
                                                                         seed=seed, step=step)]


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class DemoPool:
    """One task's training items, as prompt items. Images are opened on demand and LRU-cached."""

    def __init__(self, items: Sequence[VQAItem], *, image_cache: int = 1024):
        self.items = list(items)
        if len(self.items) < 2:
            raise ValueError(f"a training pool needs at least 2 items (queries draw demos from the others), "
                             f"got {len(self.items)}")
        ids = [it.question_id for it in self.items]
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise ValueError(f"question ids must be unique in a training pool; repeated: {duplicates[:10]}")
        unanswered = [it.question_id for it in self.items if not it.multiple_choice_answer.strip()]
        if unanswered:
            raise ValueError(f"training items need an answer; empty for question ids {unanswered[:10]}")
        self.question_ids = ids
        self._image = lru_cache(maxsize=image_cache)(open_image)

    def __len__(self) -> int:
        return len(self.items)

    def prompt_item(self, index: int) -> ICLItem:
        it = self.items[index]
        return ICLItem(self._image(it.image_path), it.question, it.multiple_choice_answer)

    def prompts(self, draws: Sequence[Draw]) -> list[tuple[list[ICLItem], ICLItem]]:
        """(demos, query) prompt specs for `adapter.build_prompts`, in the order of `draws`."""
        return [([self.prompt_item(d) for d in draw.demos], self.prompt_item(draw.query)) for draw in draws]

    def fingerprint(self) -> str:
        """Hash of what the items contribute to training: ids, questions, answers, image file names, order."""
        rows = [[it.question_id, it.question, it.multiple_choice_answer, it.image_path.name] for it in self.items]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()
