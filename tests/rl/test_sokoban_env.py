"""Tests for lmmops.rl.sokoban: the gymnasium environment (steps, truncation, observation, generation).

Run: .venv/bin/python -m pytest tests/rl/test_sokoban_env.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from lmmops.eval.sokoban import Level
from lmmops.rl.sokoban import CELL_CODES, SokobanEnv

# Player, box, target in a corridor: right x3 solves it (the third push lands the box).
CORRIDOR = "#######\n#@ $ .#\n#######"


def env_at(xsb: str, **kwargs) -> SokobanEnv:
    env = SokobanEnv(**kwargs)
    env.reset(options={"level": Level.from_xsb(xsb)})
    return env


# --------------------------------------------------------------------------------------------------
# Episodes (the moves themselves are tested in tests/eval/test_sokoban.py)


def test_solving_sequence_and_integer_actions() -> None:
    env = env_at(CORRIDOR)
    rewards = [env.step(a)[1] for a in (4, np.int64(4))]  # gym-sokoban push ids: 4 = right
    _, r, terminated, truncated, info = env.step("RIGHT")  # words are case-insensitive
    assert rewards == pytest.approx([-0.1, -0.1])
    assert r == pytest.approx(10.9) and terminated and not truncated
    assert info["boxes_on_target"] == info["num_boxes"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step("left")  # the episode is over


def test_truncation_at_max_steps() -> None:
    env = env_at(CORRIDOR, max_steps=3)
    flags = [env.step("left")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    assert SokobanEnv().max_steps == 120  # gym-sokoban's default


def test_solved_on_the_last_allowed_step_is_terminated_not_truncated() -> None:
    env = env_at(CORRIDOR, max_steps=3)
    *_, (_, _, terminated, truncated, _) = [env.step("right") for _ in range(3)]
    assert (terminated, truncated) == (True, False)


def test_observation_and_spaces() -> None:
    env = SokobanEnv(max_size=8)
    obs, info = env.reset(options={"level": Level.from_xsb(CORRIDOR)})
    assert obs.shape == (8, 8) and obs.dtype == np.int8
    assert env.observation_space.contains(obs)
    assert env.action_space.contains(1) and env.action_space.contains(4) and not env.action_space.contains(0)
    assert list(obs[1, :7]) == [0, CELL_CODES["player"], 1, CELL_CODES["box"], 1, CELL_CODES["target"], 0]
    assert (obs[3:, :] == 0).all() and (obs[:, 7:] == 0).all()  # padding is wall
    assert info == {"xsb": CORRIDOR, "steps": 0, "boxes_on_target": 0, "num_boxes": 1}
    with pytest.raises(ValueError, match="max_size"):
        SokobanEnv(max_size=5).reset(options={"level": Level.from_xsb(CORRIDOR)})


def test_reset_without_level_generates_deterministically() -> None:
    a, _ = SokobanEnv(size=6, num_boxes=1).reset(seed=3)
    b, _ = SokobanEnv(size=6, num_boxes=1).reset(seed=3)
    assert (a == b).all()
    level = Level.from_xsb(CORRIDOR)
    obs, _ = SokobanEnv(level, max_size=7).reset()
    assert obs[1, 1] == CELL_CODES["player"]


def test_render_mode_rgb_array() -> None:
    env = SokobanEnv(Level.from_xsb(CORRIDOR), render_mode="rgb_array", cell=8)
    env.reset()
    frame = env.render()
    assert frame.shape == (3 * 8, 7 * 8, 3)


@pytest.mark.filterwarnings("ignore:.*alternative render modes")
def test_gymnasium_env_checker_passes() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(SokobanEnv(size=6, num_boxes=1, render_mode="rgb_array"))
