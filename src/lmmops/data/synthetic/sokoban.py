"""Synthetic Sokoban levels for MGT-Sokoban: JSONL rows with the level, its shortest solution and an image.

    from lmmops.data.synthetic.sokoban import generate_sokoban
    counts = generate_sokoban(cfg.sokoban, seed=cfg.seed, out=Path("data"))

Levels come from `lmmops.rl.sokoban.generate_level` (reverse play from the solved state, checked by the
breadth-first solver, so `solution` is a shortest one and at most cfg.max_solution_length moves).
Sizes and box counts are drawn from cfg.sizes and cfg.num_boxes; duplicate levels are redrawn and no test
level appears in train.

Row: {"id", "grid": [XSB rows], "height", "width", "num_boxes", "solution": ["up", ...], "image":
<PNG path relative to the data directory>, "message": <JSON string of a chat with the image and the
instructions, as the multimodal rows>}. LMM-R1's Sokoban rows carry the level state next to the prompt;
this layout is ours (there is no single public file format for it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmmops.config import SokobanGenConfig
from lmmops.data import layout
from lmmops.data.synthetic.io import save_png, split_seed, write_jsonl
from lmmops.rl.sokoban import generate_level, render

FAMILY_OFFSET = 404

INSTRUCTIONS = (
    "You are playing Sokoban. The image shows the level: brown walls, orange boxes, red targets, green "
    "boxes already on a target and the blue player. The same level in XSB text (# wall, $ box, . target, "
    "* box on target, @ player, + player on target):\n{grid}\n"
    "Push every box onto a target. Answer with your moves as a comma-separated list of up, down, left "
    "and right."
)


def sokoban_message(image_path: str, grid: list[str]) -> str:
    text = INSTRUCTIONS.format(grid="\n".join(grid))
    turn = {"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": text}]}
    return json.dumps([turn], ensure_ascii=False, sort_keys=True)


def generate_sokoban(cfg: SokobanGenConfig, seed: int, out: Path,
                     progress: Callable[[int], None] = lambda n: None, *,
                     test_seed: int | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    seen: set[tuple[str, ...]] = set()  # across splits: a test level never appears in train
    for split_index, split in enumerate(layout.JSONL_SPLITS):
        rng = np.random.default_rng([split_seed(seed, test_seed, split), FAMILY_OFFSET, split_index])
        rows = []
        n = getattr(cfg, split)
        while len(rows) < n:
            size = int(rng.choice(cfg.sizes))
            num_boxes = int(rng.choice(cfg.num_boxes))
            level_seed = int(rng.integers(2**31))
            level, solution = generate_level(size, num_boxes, level_seed, max_moves=cfg.max_solution_length)
            grid = level.rows()
            if tuple(grid) in seen:
                continue
            seen.add(tuple(grid))
            item_id = f"sokoban-{split}-{len(rows):05d}"
            image_path = layout.image_file(layout.SOKOBAN_DIR, split, item_id)
            save_png(out / image_path, render(level, cfg.cell_pixels))
            rows.append({
                "id": item_id,
                "grid": grid,
                "height": level.height,
                "width": level.width,
                "num_boxes": len(level.boxes),
                "solution": list(solution),
                "image": image_path,
                "message": sokoban_message(image_path, grid),
            })
            progress(1)
        counts[split] = write_jsonl(out / layout.jsonl_file(layout.SOKOBAN_DIR, split), rows)
    return counts
