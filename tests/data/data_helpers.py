"""Constants and helpers shared by the data-layer tests (a uniquely named module: every test directory
has its own conftest.py, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from testutil import tiny_config

SAMPLES = Path(__file__).parent / "samples"

# Larger than the other tests' tiny data: every family and Sokoban size has a few rows, a fifth near-duplicates.
SMALL = tiny_config(
    "generate",
    seed=3,
    vqa={"train": 120, "val": 30, "test": 30, "near_duplicate_share": 0.2},
    deepscaler={"train": 10, "test": 5},
    multimodal={"multimath_train": 6, "multimath_test": 3, "geo_train": 8, "geo_test": 4, "perce_reason_train": 6,
                "perce_reason_test": 3},
    sokoban={"train": 4, "test": 2, "sizes": [6, 7], "num_boxes": [1, 2]},
)


def tree_md5(root: Path) -> dict[str, str]:
    """MD5 of every file under root, keyed by relative path (directories compare by their files)."""
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
