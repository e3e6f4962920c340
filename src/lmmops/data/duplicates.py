"""Cross-split duplicates of the multimodal domains: held-out items that repeat a train item.

A held-out item (any split but train) counts, per domain (multimath, geo, perce_reason, sokoban):
- `same_item`: its question text and its image content (SHA-256 of the decoded pixels, so a re-encoded file
  still matches) equal a train item's; for Sokoban, its board equals a train level's (the image is drawn from it);
- `same_text_answer`: its question text occurs in train and every train item with that text has its answer,
  so the text alone gives the label that train teaches, without the figure (a generic question such as "What is
  its area?" whose train answers differ is not one; not for Sokoban, whose prompt text is the same for every
  level).

Such items measure memory, not reading or solving. `duplicate_counts(data_dir)` gives
{"duplicates/<kind>/<domain>/<split>": count}; `duplicate_items` the ids, for a report; `duplicate_pairs` each id
with the train item it repeats (the first train item with that key or text), for validation's failures. Pure reads
of data/.

Run: `python -c "from pathlib import Path; from lmmops.data.duplicates import duplicate_counts;
print(duplicate_counts(Path('data')))"`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence, Sized
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

from lmmops.data.loaders import available_splits, load_multimath, load_sokoban, load_vermulti

DOMAINS = ("multimath", "geo", "perce_reason", "sokoban")
TRAIN = "train"


def image_digest(image: Image.Image) -> str:
    """SHA-256 of an image's RGB pixels and size: equal for the same picture in any file encoding."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@cache
def pixel_digest(path: Path) -> str:
    """`image_digest` of an image file."""
    with Image.open(path) as im:
        return image_digest(im)


def multimodal_digests(data_dir: Path, domains: Sequence[str] = ("multimath", "geo", "perce_reason")) -> set[str]:
    """The pixel digests of every image of `domains` in every split on disk (what generated figures must avoid)."""
    out: set[str] = set()
    for domain in domains:
        splits, load = _loader(Path(data_dir), domain)
        for split in splits:
            out |= {pixel_digest(path) for item in load(split) for path in item.images}
    return out


def _loader(data_dir: Path, domain: str) -> tuple[list[str], Callable[[str], Sequence[Any]]]:
    """The splits on disk for `domain` and a function that loads one."""
    if domain == "multimath":
        return available_splits(data_dir, "multimath").get("", []), lambda s: load_multimath(data_dir, s)
    if domain == "sokoban":
        return available_splits(data_dir, "sokoban").get("", []), lambda s: load_sokoban(data_dir, s)
    return (available_splits(data_dir, "vermulti").get(domain, []),
            lambda s: load_vermulti(data_dir, domain, s))


def _item_key(domain: str, item: Any) -> tuple[str, ...]:
    if domain == "sokoban":
        return tuple(item.grid)
    return (item.question, *map(pixel_digest, item.images))


def text_answers(items: Sequence[Any]) -> dict[str, set[str]]:
    """{question text: the answers train gives it}: a text with one answer there determines it."""
    out: dict[str, set[str]] = {}
    for item in items:
        out.setdefault(item.question, set()).add(item.answer)
    return out


def duplicate_pairs(data_dir: Path,
                    domains: Sequence[str] = DOMAINS) -> dict[tuple[str, str, str], list[tuple[str, str]]]:
    """{(kind, domain, split): [(id, id of the first train item it repeats)]}, every held-out split."""
    out: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for domain in domains:
        splits, load = _loader(Path(data_dir), domain)
        if TRAIN not in splits:
            continue
        train_items = load(TRAIN)
        first_by_key: dict[tuple[str, ...], str] = {}
        first_by_text: dict[str, str] = {}
        for it in train_items:
            first_by_key.setdefault(_item_key(domain, it), it.id)
            if domain != "sokoban":
                first_by_text.setdefault(it.question, it.id)
        answers = text_answers(train_items) if domain != "sokoban" else {}
        for split in (s for s in splits if s != TRAIN):
            items = load(split)
            out[("same_item", domain, split)] = [(it.id, first_by_key[key]) for it in items
                                                 if (key := _item_key(domain, it)) in first_by_key]
            if domain != "sokoban":
                out[("same_text_answer", domain, split)] = [
                    (it.id, first_by_text[it.question]) for it in items if answers.get(it.question) == {it.answer}]
    return out


def duplicate_items(data_dir: Path, domains: Sequence[str] = DOMAINS) -> dict[tuple[str, str, str], list[str]]:
    """{(kind, domain, split): ids of that split's items that repeat a train item by `kind`}, every held-out split."""
    return {key: [item_id for item_id, _ in pairs] for key, pairs in duplicate_pairs(data_dir, domains).items()}


def counts(duplicates: Mapping[tuple[str, str, str], Sized]) -> dict[str, float]:
    """{"duplicates/<kind>/<domain>/<split>": how many} of `duplicate_items` or `duplicate_pairs`."""
    return {f"duplicates/{kind}/{domain}/{split}": float(len(found))
            for (kind, domain, split), found in duplicates.items()}


def duplicate_counts(data_dir: Path, domains: Sequence[str] = DOMAINS) -> dict[str, float]:
    """{"duplicates/<kind>/<domain>/<split>": number of held-out items that repeat a train item}."""
    return counts(duplicate_items(data_dir, domains))
