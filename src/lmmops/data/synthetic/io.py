"""Deterministic writers: the same content always gives the same bytes.

JSON keys are sorted, separators fixed and non-ASCII kept as UTF-8; PNG files are written with fixed
encoder settings and no metadata chunks (PIL writes no timestamp unless asked to). Every generator
writes through these three functions so that identical configs give byte-identical trees.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

PNG_PARAMS: dict[str, Any] = {"format": "PNG", "optimize": False, "compress_level": 6}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")
            n += 1
    return n


def save_png(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, **PNG_PARAMS)


def split_seed(seed: int, test_seed: int | None, split: str) -> int:
    """The seed a split draws from: `test_seed` for the test split (when given), `seed` for the others."""
    return test_seed if split == "test" and test_seed is not None else seed
