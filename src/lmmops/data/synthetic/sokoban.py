"""Synthetic Sokoban levels for MGT-Sokoban: the level generator, the renderer, and JSONL rows with images.

    from lmmops.data.synthetic.sokoban import generate_sokoban
    counts = generate_sokoban(cfg.sokoban, seed=cfg.seed, out=Path("data"))

- `generate_level(size, num_boxes, seed)`: reverse play from a solved state (as gym-sokoban does):
  carve a room by a random walk inside a size x size wall border, put the boxes on their targets, walk
  the player backwards pulling boxes, keep the state that moved the boxes furthest, and check it with
  the solver (`lmmops.eval.sokoban.solve`). Deterministic for a seed. Returns `(level, shortest_solution)`.
- `render(level)`: a deterministic RGB picture (PIL) for the multimodal prompt.
- `generate_sokoban`: the dataset. Each `solution` is a shortest one and at most cfg.max_solution_length
  moves. Sizes and box counts are drawn from cfg.sizes and cfg.num_boxes; duplicate levels are redrawn
  and no test level appears in train.

Row: {"id", "grid": [XSB rows], "height", "width", "num_boxes", "solution": ["up", ...], "image":
<PNG path relative to the data directory>, "message": <JSON string of a chat with the image and the
instructions, as the multimodal rows>}. LMM-R1's Sokoban rows carry the level state next to the prompt;
this layout is ours (there is no single public file format for it). The board is in the image; the prompt
text also gives it as XSB for a `cfg.board_in_text_share` of the levels (0 by default: the model must read it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from lmmops.config import SokobanGenConfig
from lmmops.data import layout
from lmmops.data.synthetic.io import save_png, split_seed, write_jsonl
from lmmops.eval.sokoban import DELTAS, Level, Pos, solve

FAMILY_OFFSET = 404


# --------------------------------------------------------------------------------------------------
# Generator


class GeneratedLevel(NamedTuple):
    """A generated level and a shortest solution (unpacks as `level, solution = generate_level(...)`)."""

    level: Level
    solution: list[str]


def _carve_room(size: int, rng: random.Random) -> set[Pos]:
    """Floor cells carved by a random walk with random brushes inside the border (gym-sokoban's way)."""
    lo, hi = 1, size - 2
    brushes = [
        [(0, 0)],
        [(0, 0), (0, 1)],
        [(0, 0), (1, 0)],
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    ]
    pos = (rng.randint(lo, hi), rng.randint(lo, hi))
    direction = rng.choice(list(DELTAS.values()))
    floor = {pos}
    for _ in range(int(1.5 * 2 * size)):
        if rng.random() < 0.35:
            direction = rng.choice(list(DELTAS.values()))
        nxt = (pos[0] + direction[0], pos[1] + direction[1])
        if not (lo <= nxt[0] <= hi and lo <= nxt[1] <= hi):
            direction = rng.choice(list(DELTAS.values()))
            continue
        pos = nxt
        for dr, dc in rng.choice(brushes):
            cell = (pos[0] + dr, pos[1] + dc)
            if lo <= cell[0] <= hi and lo <= cell[1] <= hi:
                floor.add(cell)
    return floor


def _reverse_play(
    floor: set[Pos], targets: list[Pos], max_nodes: int, max_moves: int | None, rng: random.Random
) -> tuple[Pos, tuple[Pos, ...], int] | None:
    """Play backwards from the solved state: breadth-first over reverse moves (the player steps to a free
    cell, optionally pulling the box behind it), from every solved state (boxes on targets, player on any
    free cell). A reverse move undoes exactly one forward move, so a state's depth here is its shortest
    solution length. Returns a random state of the deepest layer reached within `max_nodes` states and
    `max_moves` layers, with its depth, or None if no box can be pulled at all."""
    boxes0 = tuple(sorted(targets))
    depth: dict[tuple[Pos, tuple[Pos, ...]], int] = {}
    layer = [(p, boxes0) for p in sorted(floor) if p not in boxes0]
    for state in layer:
        depth[state] = 0
    deepest: list[tuple[Pos, tuple[Pos, ...]]] = []
    d = found = 0
    while layer and len(depth) < max_nodes and (max_moves is None or d < max_moves):
        d += 1
        nxt_layer = []
        for player, boxes in layer:
            for dr, dc in DELTAS.values():
                q = (player[0] + dr, player[1] + dc)
                if q not in floor or q in boxes:
                    continue
                candidates = [(q, boxes)]
                behind = (player[0] - dr, player[1] - dc)
                if behind in boxes:
                    candidates.append((q, tuple(sorted(player if b == behind else b for b in boxes))))
                for state in candidates:
                    if state not in depth:
                        depth[state] = d
                        nxt_layer.append(state)
        layer = nxt_layer
        if layer and any(state[1] != boxes0 for state in layer):
            deepest = [state for state in layer if state[1] != boxes0]
            found = d
    if not deepest:
        return None
    player, boxes = rng.choice(deepest)
    return player, boxes, found


def generate_level(
    size: int,
    num_boxes: int,
    seed: int,
    *,
    max_moves: int | None = None,
    max_nodes: int = 20_000,
    max_attempts: int = 200,
) -> GeneratedLevel:
    """A solvable size x size level with `num_boxes` boxes, not all on targets, and its shortest solution.

    Reverse play explores at most `max_nodes` states (more: harder levels, slower generation) and
    `max_moves` moves from the solved state (e.g. 50, the Sokoban reward's replay limit); the chosen state
    is one of the farthest from solved, then checked by `solve`. Deterministic for
    (size, num_boxes, seed, max_moves, max_nodes). Raises ValueError for impossible sizes and
    RuntimeError if no level was found in `max_attempts` tries.
    """
    if size < 5:
        raise ValueError(f"size must be >= 5, got {size}")
    if num_boxes < 1 or num_boxes > (size - 2) ** 2 // 4:
        raise ValueError(f"num_boxes must be in 1..{(size - 2) ** 2 // 4} for size {size}, got {num_boxes}")
    rng = random.Random(f"sokoban:{size}:{num_boxes}:{seed}")
    for _ in range(max_attempts):
        floor = _carve_room(size, rng)
        if len(floor) < max(2 * num_boxes + 3, (size - 2) ** 2 // 3):
            continue
        targets = rng.sample(sorted(floor), num_boxes)
        played = _reverse_play(floor, targets, max_nodes, max_moves, rng)
        if played is None:
            continue
        player, boxes, depth = played
        walls = {(r, c) for r in range(size) for c in range(size)} - floor
        level = Level(size, size, frozenset(walls), frozenset(targets), frozenset(boxes), player)
        solution = solve(level, max_nodes=10 * max_nodes)
        if solution:
            if len(solution) != depth:  # both are shortest solution lengths: a disagreement is a bug
                raise RuntimeError(f"solver found {len(solution)} moves, reverse play {depth} (seed {seed})")
            return GeneratedLevel(level, solution)
    raise RuntimeError(f"no {size} x {size} level with {num_boxes} boxes in {max_attempts} attempts (seed {seed})")


# --------------------------------------------------------------------------------------------------
# Rendering

_COLOURS: dict[str, tuple[int, int, int]] = {
    "wall": (96, 64, 48),
    "floor": (224, 224, 208),
    "target": (220, 40, 40),
    "box": (230, 160, 40),
    "box_on_target": (40, 170, 60),
    "player": (40, 80, 220),
}


def render(level: Level, cell: int = 16) -> Image.Image:
    """An RGB image, `cell` pixels per square: brown walls, pale floor, red target dots, orange boxes,
    green boxes on targets, a blue player (with the red target dot when standing on a target)."""
    if cell < 4:
        raise ValueError(f"cell must be >= 4 pixels, got {cell}")
    image = Image.new("RGB", (level.width * cell, level.height * cell), _COLOURS["floor"])
    draw = ImageDraw.Draw(image)
    m = max(1, cell // 8)  # margin inside a square
    for r in range(level.height):
        for c in range(level.width):
            x0, y0, x1, y1 = c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1
            p = (r, c)
            if p in level.walls:
                draw.rectangle((x0, y0, x1, y1), fill=_COLOURS["wall"])
                continue
            if p in level.boxes:
                colour = _COLOURS["box_on_target"] if p in level.targets else _COLOURS["box"]
                draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=colour)
                continue
            if p == level.player:
                draw.ellipse((x0 + m, y0 + m, x1 - m, y1 - m), fill=_COLOURS["player"])
            if p in level.targets:
                q = cell // 3
                draw.ellipse((x0 + q, y0 + q, x1 - q, y1 - q), fill=_COLOURS["target"])
    return image


# --------------------------------------------------------------------------------------------------
# Dataset


INSTRUCTIONS = (
    "You are playing Sokoban. The image shows the level: brown walls, orange boxes, red targets, green "
    "boxes already on a target and the blue player.{board}\n"
    "Push every box onto a target. Answer with your moves as a comma-separated list of up, down, left "
    "and right."
)
BOARD_TEXT = (" The same level in XSB text (# wall, $ box, . target, * box on target, @ player, + player on "
              "target):\n{grid}")


def sokoban_message(image_path: str, grid: list[str], *, board_in_text: bool = False) -> str:
    """The chat `message`; the board is in the image, and also in the text when `board_in_text`."""
    text = INSTRUCTIONS.format(board=BOARD_TEXT.format(grid="\n".join(grid)) if board_in_text else "")
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
            board_in_text = bool(rng.random() < cfg.board_in_text_share)
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
                "message": sokoban_message(image_path, grid, board_in_text=board_in_text),
            })
            progress(1)
        counts[split] = write_jsonl(out / layout.jsonl_file(layout.SOKOBAN_DIR, split), rows)
    return counts
