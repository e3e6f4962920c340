"""Sokoban for MGT-Sokoban (PAPERS.md section 5): levels, generator, solver, renderer, environment, reward.

- `Level`: an immutable level (walls, targets, boxes, player) with the standard XSB text notation
  (`#` wall, space floor, `.` target, `$` box, `*` box on target, `@` player, `+` player on target;
  `-` and `_` are read as floor) and a JSON-friendly dict form for JSONL storage.
- `generate_level(size, num_boxes, seed)`: reverse play from a solved state (as gym-sokoban does):
  carve a room by a random walk inside a size x size wall border, put the boxes on their targets, walk
  the player backwards pulling boxes, keep the state that moved the boxes furthest, and check it with
  the solver. Deterministic for a seed. Returns `(level, shortest_solution)`.
- `solve(level)`: breadth-first search over (player, boxes) with a dead-square prune; the result is a
  shortest solution in moves (every step counts, pushes or not).
- `render(level)`: a deterministic RGB picture (PIL) for the multimodal prompt.
- `SokobanEnv`: a gymnasium environment with gym-sokoban's dynamics and rewards.
- `parse_actions` and `sokoban_reward`: LMM-R1's rule-based Sokoban reward.

Environment (gym-sokoban's numbers): -0.1 per step, +1 when the number of boxes on targets goes up,
-1 when it goes down, +10 when all boxes are on targets (then `terminated`). Walking into a wall, or
pushing a box into a wall or another box, leaves the state unchanged and still costs the step.
`truncated` is set after `max_steps` steps (default 120, gym-sokoban's) unless the episode terminated
on that step. Actions: "up", "down", "left", "right" (any case) or gym-sokoban's push ids 1-4
(1 up, 2 down, 3 left, 4 right); `action_space` is `Discrete(4, start=1)`. gym-sokoban's no-op (0) and
its move-only actions (5-8) are not offered: an LMM answer only names directions. Stepping a finished
episode raises RuntimeError.

Observation: an int8 grid of shape (max_size, max_size) (default 10 x 10) with gym-sokoban's
room-state codes (0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player, 6 player on target),
the level in the top-left corner and the rest padded with walls. `info` carries the XSB text
(`info["xsb"]`), the step count and the boxes on targets. A level larger than max_size is refused.

Sokoban reward (the paper names its parts, not the length term, which is ours):
    0                                    if format_reward(completion) == 0 or any action is invalid;
    0.5 + best + length_term             otherwise, where
    best        = max over prefixes k = 0..n' of the cumulative environment reward of the first k
                  actions (the empty prefix scores 0), replayed open loop from the level, n' = the
                  number of actions replayed: at most `max_actions` (50), stopping at termination;
    length_term = -0.1 * min(n - k*, 10), n = the number of actions in the answer (all of them, also
                  those past 50 or past the solving move), k* = the shortest prefix reaching `best`.
So actions that do not contribute to the best prefix cost what a step costs in the environment, capped
at -1: a solution followed by junk scores less than the bare solution, and the environment's own -0.1
per step already prefers shorter solutions among solving ones. The value is rounded to 6 decimals.
Actions are comma-separated in the `<answer>` (optionally inside `\\boxed{}` and `$`), case-insensitive.

Run the tests with `.venv/bin/python -m pytest tests/rl/test_sokoban.py -q`.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from lmmops.rl.rewards import answer_span, format_reward

__all__ = [
    "ACTIONS",
    "CELL_CODES",
    "GeneratedLevel",
    "Level",
    "ReplayResult",
    "SokobanEnv",
    "generate_level",
    "parse_actions",
    "render",
    "replay",
    "sokoban_reward",
    "solve",
]

Pos = tuple[int, int]

ACTIONS: tuple[str, ...] = ("up", "down", "left", "right")
_DELTAS: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
# gym-sokoban's push actions.
_ACTION_IDS: dict[int, str] = {1: "up", 2: "down", 3: "left", 4: "right"}

# gym-sokoban's rewards.
STEP_PENALTY = -0.1
BOX_ON_TARGET_REWARD = 1.0
BOX_OFF_TARGET_PENALTY = -1.0
FINISHED_REWARD = 10.0
DEFAULT_MAX_STEPS = 120

# gym-sokoban's room-state codes (6 is its rendering code for the player on a target).
CELL_CODES: dict[str, int] = {
    "wall": 0,
    "floor": 1,
    "target": 2,
    "box_on_target": 3,
    "box": 4,
    "player": 5,
    "player_on_target": 6,
}

# Sokoban reward: length term per action that is not part of the best prefix, and its cap in actions.
LENGTH_PENALTY_PER_ACTION = 0.1
LENGTH_PENALTY_MAX_ACTIONS = 10
FORMAT_BONUS = 0.5


# --------------------------------------------------------------------------------------------------
# Level


@dataclass(frozen=True)
class Level:
    """An immutable Sokoban level; positions are (row, column), (0, 0) the top-left corner.

    Every in-bounds cell that is not a wall is floor; moving out of the grid counts as walking into a
    wall (ragged XSB rows are padded with floor, which the outer walls normally make unreachable).
    """

    height: int
    width: int
    walls: frozenset[Pos]
    targets: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos

    def __post_init__(self) -> None:
        for name in ("walls", "targets", "boxes"):
            object.__setattr__(self, name, frozenset(tuple(p) for p in getattr(self, name)))
        object.__setattr__(self, "player", tuple(self.player))
        if self.height < 1 or self.width < 1:
            raise ValueError(f"level must be at least 1 x 1, got {self.height} x {self.width}")
        cells = {"walls": self.walls, "targets": self.targets, "boxes": self.boxes, "player": {self.player}}
        for name, positions in cells.items():
            outside = [p for p in positions if not (0 <= p[0] < self.height and 0 <= p[1] < self.width)]
            if outside:
                raise ValueError(f"{name} outside the {self.height} x {self.width} grid: {sorted(outside)}")
        if not self.boxes:
            raise ValueError("level has no boxes")
        if len(self.boxes) != len(self.targets):
            raise ValueError(f"level has {len(self.boxes)} boxes but {len(self.targets)} targets")
        for name in ("targets", "boxes"):
            on_wall = getattr(self, name) & self.walls
            if on_wall:
                raise ValueError(f"{name} on walls: {sorted(on_wall)}")
        if self.player in self.walls:
            raise ValueError(f"player on a wall at {self.player}")
        if self.player in self.boxes:
            raise ValueError(f"player on a box at {self.player}")

    @property
    def solved(self) -> bool:
        return self.boxes == self.targets

    @classmethod
    def from_xsb(cls, text: str) -> Level:
        """Parse XSB text. Blank leading/trailing lines are ignored; ragged rows are padded with floor."""
        lines = text.split("\n")
        lines = [line.rstrip("\r") for line in lines]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise ValueError("empty level")
        walls, targets, boxes, players = set(), set(), set(), []
        for r, line in enumerate(lines):
            for c, ch in enumerate(line):
                if ch == "#":
                    walls.add((r, c))
                elif ch in " -_":
                    pass
                elif ch in ".*+":
                    targets.add((r, c))
                    if ch == "*":
                        boxes.add((r, c))
                    elif ch == "+":
                        players.append((r, c))
                elif ch == "$":
                    boxes.add((r, c))
                elif ch == "@":
                    players.append((r, c))
                else:
                    raise ValueError(f"unknown character {ch!r} at row {r}, column {c}")
        if len(players) != 1:
            raise ValueError(f"level must have exactly one player, found {len(players)}")
        return cls(
            height=len(lines),
            width=max(len(line) for line in lines),
            walls=frozenset(walls),
            targets=frozenset(targets),
            boxes=frozenset(boxes),
            player=players[0],
        )

    def rows(self) -> list[str]:
        """The level as XSB rows, all of the full width (trailing floor kept, so a round trip is exact)."""
        out = []
        for r in range(self.height):
            row = []
            for c in range(self.width):
                p = (r, c)
                if p in self.walls:
                    row.append("#")
                elif p == self.player:
                    row.append("+" if p in self.targets else "@")
                elif p in self.boxes:
                    row.append("*" if p in self.targets else "$")
                else:
                    row.append("." if p in self.targets else " ")
            out.append("".join(row))
        return out

    def to_xsb(self) -> str:
        return "\n".join(self.rows())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: {"height", "width", "grid": [XSB rows]}."""
        return {"height": self.height, "width": self.width, "grid": self.rows()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Level:
        level = cls.from_xsb("\n".join(data["grid"]))
        if (level.height, level.width) != (data.get("height", level.height), data.get("width", level.width)):
            raise ValueError(
                f"grid is {level.height} x {level.width} but the dict says {data['height']} x {data['width']}"
            )
        return level

    def is_floor(self, p: Pos) -> bool:
        return 0 <= p[0] < self.height and 0 <= p[1] < self.width and p not in self.walls

    def with_state(self, player: Pos, boxes: Iterable[Pos]) -> Level:
        return Level(self.height, self.width, self.walls, self.targets, frozenset(boxes), player)


# --------------------------------------------------------------------------------------------------
# Dynamics (one function shared by the environment, the replay and the tests)


def _step_state(level: Level, player: Pos, boxes: frozenset[Pos], action: str) -> tuple[Pos, frozenset[Pos]]:
    dr, dc = _DELTAS[action]
    nxt = (player[0] + dr, player[1] + dc)
    if not level.is_floor(nxt):
        return player, boxes
    if nxt in boxes:
        beyond = (nxt[0] + dr, nxt[1] + dc)
        if not level.is_floor(beyond) or beyond in boxes:
            return player, boxes
        return nxt, (boxes - {nxt}) | {beyond}
    return nxt, boxes


def _action_name(action: Any) -> str:
    if isinstance(action, str):
        name = action.strip().lower()
        if name in _DELTAS:
            return name
    elif isinstance(action, (int, np.integer)) and not isinstance(action, bool):
        name = _ACTION_IDS.get(int(action), "")
        if name:
            return name
    raise ValueError(f"invalid action {action!r}: use one of {ACTIONS} or 1-4 (1 up 2 down 3 left 4 right)")


# --------------------------------------------------------------------------------------------------
# Solver


def _dead_free_cells(level: Level) -> set[Pos]:
    """Cells from which a lone box can still be pushed to some target (all others are dead squares)."""
    live = set(level.targets)
    queue = deque(level.targets)
    while queue:
        q = queue.popleft()
        for dr, dc in _DELTAS.values():
            # The box came from p = q - d, pushed by a player standing at p - d.
            p = (q[0] - dr, q[1] - dc)
            pusher = (p[0] - dr, p[1] - dc)
            if p not in live and level.is_floor(p) and level.is_floor(pusher):
                live.add(p)
                queue.append(p)
    return live


def solve(level: Level, max_nodes: int = 200_000) -> list[str] | None:
    """A shortest solution (fewest moves) by breadth-first search, or None if unsolvable or the search
    visits more than `max_nodes` states. Boxes pushed onto dead squares are pruned."""
    if level.solved:
        return []
    # Flat indices on a grid padded with one ring of walls: no bounds checks in the inner loop.
    w = level.width + 2
    floor = bytearray((level.height + 2) * w)
    for r in range(level.height):
        for c in range(level.width):
            if (r, c) not in level.walls:
                floor[(r + 1) * w + c + 1] = 1
    live = bytearray(len(floor))
    for r, c in _dead_free_cells(level):
        live[(r + 1) * w + c + 1] = 1
    targets = frozenset((r + 1) * w + c + 1 for r, c in level.targets)
    moves = [(-w, "up"), (w, "down"), (-1, "left"), (1, "right")]
    start = (
        (level.player[0] + 1) * w + level.player[1] + 1,
        tuple(sorted((r + 1) * w + c + 1 for r, c in level.boxes)),
    )
    if any(not live[b] for b in start[1]):
        return None
    parent: dict[tuple[int, tuple[int, ...]], tuple[Any, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, boxes = state
        for delta, name in moves:
            q = player + delta
            if not floor[q]:
                continue
            if q in boxes:
                b2 = q + delta
                if not floor[b2] or not live[b2] or b2 in boxes:
                    continue
                new_boxes = tuple(sorted(b2 if b == q else b for b in boxes))
                new = (q, new_boxes)
                if new in parent:
                    continue
                parent[new] = (state, name)
                if targets.issuperset(new_boxes):
                    return _path(parent, new)
            else:
                new = (q, boxes)
                if new in parent:
                    continue
                parent[new] = (state, name)
            queue.append(new)
        if len(parent) > max_nodes:
            return None
    return None


def _path(parent: dict[Any, tuple[Any, str] | None], state: Any) -> list[str]:
    path = []
    link = parent[state]
    while link is not None:
        state, name = link
        path.append(name)
        link = parent[state]
    return path[::-1]


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
    direction = rng.choice(list(_DELTAS.values()))
    floor = {pos}
    for _ in range(int(1.5 * 2 * size)):
        if rng.random() < 0.35:
            direction = rng.choice(list(_DELTAS.values()))
        nxt = (pos[0] + direction[0], pos[1] + direction[1])
        if not (lo <= nxt[0] <= hi and lo <= nxt[1] <= hi):
            direction = rng.choice(list(_DELTAS.values()))
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
            for dr, dc in _DELTAS.values():
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
# Environment


class SokobanEnv(gym.Env):
    """gym-sokoban's dynamics and rewards on a given or generated level (see the module docstring).

    `reset(options={"level": level})` plays that level; without a level it plays the constructor's
    level, or else a new `generate_level(size, num_boxes, seed)` with a seed drawn from the env's RNG.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        level: Level | None = None,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_size: int = 10,
        size: int = 7,
        num_boxes: int = 2,
        render_mode: str | None = None,
        cell: int = 16,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.default_level = level
        self.max_steps = max_steps
        self.max_size = max_size
        self.size = size
        self.num_boxes = num_boxes
        self.render_mode = render_mode
        self.cell = cell
        self.action_space = spaces.Discrete(4, start=1)
        self.observation_space = spaces.Box(0, 6, shape=(max_size, max_size), dtype=np.int8)
        self.level: Level | None = None
        self.steps = 0
        self._done = True

    # The state lives in `self.level` (an immutable Level whose boxes and player are the current ones).
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        level = (options or {}).get("level") or self.default_level
        if level is None:
            level = generate_level(self.size, self.num_boxes, int(self.np_random.integers(2**31))).level
        if not isinstance(level, Level):
            raise ValueError(f"options['level'] must be a Level, got {type(level).__name__}")
        if level.height > self.max_size or level.width > self.max_size:
            raise ValueError(f"level {level.height} x {level.width} exceeds max_size {self.max_size}")
        self.level = level
        self.steps = 0
        self._done = False
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        name = _action_name(action)
        if self.level is None or self._done:
            raise RuntimeError("episode is over (or never started): call reset()")
        level = self.level
        on_before = len(level.boxes & level.targets)
        player, boxes = _step_state(level, level.player, level.boxes, name)
        self.level = level.with_state(player, boxes)
        self.steps += 1
        on_after = len(boxes & level.targets)
        reward = STEP_PENALTY
        if on_after > on_before:
            reward += BOX_ON_TARGET_REWARD
        elif on_after < on_before:
            reward += BOX_OFF_TARGET_PENALTY
        terminated = self.level.solved
        if terminated:
            reward += FINISHED_REWARD
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        return self._observation(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode != "rgb_array" or self.level is None:
            return None
        return np.asarray(render(self.level, self.cell))

    def _observation(self) -> np.ndarray:
        assert self.level is not None
        obs = np.zeros((self.max_size, self.max_size), dtype=np.int8)  # padding: walls
        level = self.level
        for r in range(level.height):
            for c in range(level.width):
                p = (r, c)
                if p in level.walls:
                    code = "wall"
                elif p == level.player:
                    code = "player_on_target" if p in level.targets else "player"
                elif p in level.boxes:
                    code = "box_on_target" if p in level.targets else "box"
                else:
                    code = "target" if p in level.targets else "floor"
                obs[r, c] = CELL_CODES[code]
        return obs

    def _info(self) -> dict[str, Any]:
        assert self.level is not None
        return {
            "xsb": self.level.to_xsb(),
            "steps": self.steps,
            "boxes_on_target": len(self.level.boxes & self.level.targets),
            "num_boxes": len(self.level.boxes),
        }


# --------------------------------------------------------------------------------------------------
# Reward

_BOXED_RE = re.compile(r"^\$*\s*\\boxed\s*\{(.*)\}\s*\$*$", re.DOTALL)


def parse_actions(text: str) -> list[str] | None:
    """Actions of an answer, lower-cased, or None if any is invalid (or there are none).

    `text` is a completion (its last `<answer>` span is used) or the answer content itself: comma-
    separated words up/down/left/right in any case, optionally inside `\\boxed{}` and `$`.
    """
    span = answer_span(text)
    content = (text if span is None else span).strip()
    boxed = _BOXED_RE.match(content)
    if boxed:
        content = boxed.group(1)
    words = [word.strip().lower() for word in content.split(",")]
    if not words or any(word not in _DELTAS for word in words):
        return None
    return words


@dataclass
class ReplayResult:
    """Open-loop replay of actions: the per-step rewards and whether the level got solved."""

    rewards: list[float] = field(default_factory=list)
    solved: bool = False
    final: Level | None = None


def replay(level: Level, actions: Sequence[Any], max_actions: int = 50) -> ReplayResult:
    """Step SokobanEnv through at most `max_actions` actions, stopping when the level is solved."""
    env = SokobanEnv(max_steps=max(1, max_actions), max_size=max(level.height, level.width))
    env.reset(options={"level": level})
    result = ReplayResult()
    for action in list(actions)[:max_actions]:
        _, reward, terminated, truncated, _ = env.step(action)
        result.rewards.append(reward)
        if terminated:
            result.solved = True
        if terminated or truncated:
            break
    result.final = env.level
    return result


def sokoban_reward(completion: str, level: Level, max_actions: int = 50) -> float:
    """LMM-R1's Sokoban reward with our length term (definition in the module docstring)."""
    if format_reward(completion) == 0.0:
        return 0.0
    actions = parse_actions(completion)
    if actions is None:
        return 0.0
    result = replay(level, actions, max_actions)
    best, best_k, cumulative = 0.0, 0, 0.0
    for k, reward in enumerate(result.rewards, start=1):
        cumulative += reward
        if cumulative > best + 1e-9:  # strictly better: ties keep the shorter prefix
            best, best_k = cumulative, k
    extra = len(actions) - best_k
    length_term = -LENGTH_PENALTY_PER_ACTION * min(extra, LENGTH_PENALTY_MAX_ACTIONS)
    return round(FORMAT_BONUS + best + length_term, 6)
