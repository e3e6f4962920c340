"""The Sokoban environment of MGT-Sokoban (docs/methods.md §8): gym-sokoban's dynamics and rewards.

    env = SokobanEnv(size=7, num_boxes=2)
    obs, info = env.reset(seed=0)        # or reset(options={"level": level})
    obs, reward, terminated, truncated, info = env.step("right")

The rules (levels, moves and their rewards, the Sokoban reward of an answer) are `lmmops.eval.sokoban`;
levels without a given one come from `lmmops.data.synthetic.sokoban.generate_level`.

Episodes: -0.1 per step, +1 when the number of boxes on targets goes up, -1 when it goes down, +10 when
all boxes are on targets (then `terminated`). `truncated` is set after `max_steps` steps (default 120,
gym-sokoban's) unless the episode terminated on that step. Actions: "up", "down", "left", "right" (any
case) or gym-sokoban's push ids 1-4 (1 up, 2 down, 3 left, 4 right); `action_space` is
`Discrete(4, start=1)`. gym-sokoban's no-op (0) and its move-only actions (5-8) are not offered: an LMM
answer only names directions. Stepping a finished episode raises RuntimeError.

Observation: an int8 grid of shape (max_size, max_size) (default 10 x 10) with gym-sokoban's
room-state codes (0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player, 6 player on target),
the level in the top-left corner and the rest padded with walls. `info` carries the XSB text
(`info["xsb"]`), the step count and the boxes on targets. A level larger than max_size is refused.

Run the tests with `.venv/bin/python -m pytest tests/rl/test_sokoban_env.py -q`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lmmops.data.synthetic.sokoban import generate_level, render
from lmmops.eval.sokoban import Level, action_name, step

__all__ = ["CELL_CODES", "DEFAULT_MAX_STEPS", "SokobanEnv"]

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
        name = action_name(action)
        if self.level is None or self._done:
            raise RuntimeError("episode is over (or never started): call reset()")
        self.level, reward, terminated = step(self.level, name)
        self.steps += 1
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        return self._observation(), reward, terminated, truncated, self._info()

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
