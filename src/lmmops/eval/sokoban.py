"""Sokoban rules of MGT-Sokoban (docs/methods.md §8): levels, moves, replay, solver, the Sokoban reward.

- `Level`: an immutable level (walls, targets, boxes, player) with the standard XSB text notation
  (`#` wall, space floor, `.` target, `$` box, `*` box on target, `@` player, `+` player on target;
  `-` and `_` are read as floor) and a JSON-friendly dict form for JSONL storage.
- `step(level, action)`: one move with gym-sokoban's dynamics and reward; `replay` plays a list of moves.
- `solve(level)`: breadth-first search over (player, boxes) with a dead-square prune; the result is a
  shortest solution in moves (every step counts, pushes or not).
- `parse_actions` and `sokoban_reward`: LMM-R1's rule-based Sokoban reward.
The level generator and the renderer live in `lmmops.data.synthetic.sokoban`, the gymnasium
environment in `lmmops.rl.sokoban`.

Moves (gym-sokoban's numbers): -0.1 per step, +1 when the number of boxes on targets goes up, -1 when
it goes down, +10 when all boxes are on targets (solved). Walking into a wall, or pushing a box into a
wall or another box, leaves the state unchanged and still costs the step. Actions: "up", "down",
"left", "right" (any case) or gym-sokoban's push ids 1-4 (1 up, 2 down, 3 left, 4 right); its no-op (0)
and move-only actions (5-8) are not offered: an LMM answer only names directions.

Sokoban reward (the paper names its parts, not the length term, which is ours):
    0                                    if format_reward(completion) == 0 or any action is invalid;
    0.5 + best + length_term             otherwise, where
    best        = max over prefixes k = 0..n' of the cumulative reward of the first k actions (the
                  empty prefix scores 0), replayed open loop from the level, n' = the number of actions
                  replayed: at most `max_actions` (50), stopping when solved;
    length_term = -0.1 * min(n - k*, 10), n = the number of actions in the answer (all of them, also
                  those past 50 or past the solving move), k* = the shortest prefix reaching `best`.
So actions that do not contribute to the best prefix cost what a step costs in the environment, capped
at -1: a solution followed by junk scores less than the bare solution, and the -0.1 per step already
prefers shorter solutions among solving ones. The value is rounded to 6 decimals.
Actions are comma-separated in the `<answer>` (optionally inside `\\boxed{}` and `$`), case-insensitive.

Run the tests with `.venv/bin/python -m pytest tests/eval/test_sokoban.py -q`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmmops.eval.scoring import answer_span, format_reward

__all__ = [
    "ACTIONS",
    "DELTAS",
    "Level",
    "Pos",
    "ReplayResult",
    "parse_actions",
    "replay",
    "sokoban_reward",
    "solve",
    "step",
]

Pos = tuple[int, int]

ACTIONS: tuple[str, ...] = ("up", "down", "left", "right")
DELTAS: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
# gym-sokoban's push actions.
_ACTION_IDS: dict[int, str] = {1: "up", 2: "down", 3: "left", 4: "right"}

# gym-sokoban's rewards.
STEP_PENALTY = -0.1
BOX_ON_TARGET_REWARD = 1.0
BOX_OFF_TARGET_PENALTY = -1.0
FINISHED_REWARD = 10.0

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
# Dynamics (one function shared by the environment, the replay and data validation)


def _step_state(level: Level, player: Pos, boxes: frozenset[Pos], action: str) -> tuple[Pos, frozenset[Pos]]:
    dr, dc = DELTAS[action]
    nxt = (player[0] + dr, player[1] + dc)
    if not level.is_floor(nxt):
        return player, boxes
    if nxt in boxes:
        beyond = (nxt[0] + dr, nxt[1] + dc)
        if not level.is_floor(beyond) or beyond in boxes:
            return player, boxes
        return nxt, (boxes - {nxt}) | {beyond}
    return nxt, boxes


def action_name(action: Any) -> str:
    """The direction an action names ("up", ...), or ValueError for anything else."""
    if isinstance(action, str):
        name = action.strip().lower()
        if name in DELTAS:
            return name
    elif isinstance(action, (int, np.integer)) and not isinstance(action, bool):
        name = _ACTION_IDS.get(int(action), "")
        if name:
            return name
    raise ValueError(f"invalid action {action!r}: use one of {ACTIONS} or 1-4 (1 up 2 down 3 left 4 right)")


def step(level: Level, action: Any) -> tuple[Level, float, bool]:
    """One move from `level` with gym-sokoban's dynamics: (the level after it, the reward, solved)."""
    name = action_name(action)
    on_before = len(level.boxes & level.targets)
    player, boxes = _step_state(level, level.player, level.boxes, name)
    after = level.with_state(player, boxes)
    on_after = len(boxes & level.targets)
    reward = STEP_PENALTY
    if on_after > on_before:
        reward += BOX_ON_TARGET_REWARD
    elif on_after < on_before:
        reward += BOX_OFF_TARGET_PENALTY
    solved = after.solved
    if solved:
        reward += FINISHED_REWARD
    return after, float(reward), solved


# --------------------------------------------------------------------------------------------------
# Solver


def _dead_free_cells(level: Level) -> set[Pos]:
    """Cells from which a lone box can still be pushed to some target (all others are dead squares)."""
    live = set(level.targets)
    queue = deque(level.targets)
    while queue:
        q = queue.popleft()
        for dr, dc in DELTAS.values():
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
# Replay and the Sokoban reward

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
    if not words or any(word not in DELTAS for word in words):
        return None
    return words


@dataclass
class ReplayResult:
    """Open-loop replay of actions: the per-step rewards and whether the level got solved."""

    rewards: list[float] = field(default_factory=list)
    solved: bool = False
    final: Level | None = None


def replay(level: Level, actions: Sequence[Any], max_actions: int = 50) -> ReplayResult:
    """`step` through at most `max_actions` actions (at least one), stopping when the level is solved."""
    if not isinstance(level, Level):
        raise ValueError(f"level must be a Level, got {type(level).__name__}")
    max_steps = max(1, max_actions)
    result = ReplayResult()
    state = level
    for steps, action in enumerate(list(actions)[:max_actions], start=1):
        state, reward, solved = step(state, action)
        result.rewards.append(reward)
        if solved:
            result.solved = True
        if solved or steps >= max_steps:
            break
    result.final = state
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
