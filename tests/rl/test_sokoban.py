"""Tests for lmmops.rl.sokoban: levels, dynamics and rewards (gym-sokoban's), solver, generator, reward.

Run: .venv/bin/python -m pytest tests/rl/test_sokoban.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmops.rl.sokoban import (
    CELL_CODES,
    Level,
    SokobanEnv,
    generate_level,
    parse_actions,
    render,
    replay,
    sokoban_reward,
    solve,
)

# Player, box, target in a corridor: right x3 solves it (the third push lands the box).
CORRIDOR = "#######\n#@ $ .#\n#######"


def env_at(xsb: str, **kwargs) -> SokobanEnv:
    env = SokobanEnv(**kwargs)
    env.reset(options={"level": Level.from_xsb(xsb)})
    return env


def answer(actions: str) -> str:
    return f"<think>plan</think><answer>{actions}</answer>"


# --------------------------------------------------------------------------------------------------
# Dynamics and rewards, case by case: (xsb, action, expected reward, expected xsb after, terminated)

STEP_CASES = [
    # walk into a wall: unchanged, still costs the step
    ("#####\n#@$.#\n#####", "left", -0.1, "#####\n#@$.#\n#####", False),
    # plain move onto floor
    (CORRIDOR, "right", -0.1, "#######\n# @$ .#\n#######", False),
    # push a box onto floor
    ("#######\n# @$ .#\n#######", "right", -0.1, "#######\n#  @$.#\n#######", False),
    # push a box into a wall: unchanged
    ("#####\n#.@$#\n#####", "right", -0.1, "#####\n#.@$#\n#####", False),
    # push a box into another box: unchanged
    ("########\n#@$$ ..#\n########", "right", -0.1, "########\n#@$$ ..#\n########", False),
    # box onto a target (+1), another box still off: not finished
    ("########\n#@$. $.#\n########", "right", 0.9, "########\n# @* $.#\n########", False),
    # box off a target (-1)
    ("#######\n#@* $.#\n#######", "right", -1.1, "#######\n# +$$.#\n#######", False),
    # box from one target to another: the count is unchanged, so only the step penalty (gym-sokoban)
    ("#######\n#@*.$ #\n#######", "right", -0.1, "#######\n# +*$ #\n#######", False),
    # last box onto its target: +1 +10 and terminated
    ("#######\n#  @$.#\n#######", "right", 10.9, "#######\n#   @*#\n#######", True),
    # player steps off a target onto floor
    ("#####\n#+ $#\n# * #\n#####", "right", -0.1, "#####\n#.@$#\n# * #\n#####", False),
]


@pytest.mark.parametrize(("xsb", "action", "reward", "after", "terminated"), STEP_CASES)
def test_step_cases(xsb: str, action: str, reward: float, after: str, terminated: bool) -> None:
    env = env_at(xsb)
    _, r, term, trunc, info = env.step(action)
    assert r == pytest.approx(reward)
    assert info["xsb"] == after
    assert term is terminated
    assert trunc is False


def test_solving_sequence_and_integer_actions() -> None:
    env = env_at(CORRIDOR)
    rewards = [env.step(a)[1] for a in (4, np.int64(4))]  # gym-sokoban push ids: 4 = right
    _, r, terminated, truncated, info = env.step("RIGHT")  # words are case-insensitive
    assert rewards == pytest.approx([-0.1, -0.1])
    assert r == pytest.approx(10.9) and terminated and not truncated
    assert info["boxes_on_target"] == info["num_boxes"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step("left")  # the episode is over


def test_integer_action_ids() -> None:
    level = Level.from_xsb("#####\n#   #\n# @ #\n#$. #\n#####")
    for action, player in [(1, (1, 2)), (2, (3, 2)), (3, (2, 1)), (4, (2, 3))]:
        env = SokobanEnv()
        env.reset(options={"level": level})
        env.step(action)
        assert env.level.player == player, action


def test_truncation_at_max_steps() -> None:
    env = env_at(CORRIDOR, max_steps=3)
    flags = [env.step("left")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    assert SokobanEnv().max_steps == 120  # gym-sokoban's default


def test_solved_on_the_last_allowed_step_is_terminated_not_truncated() -> None:
    env = env_at(CORRIDOR, max_steps=3)
    *_, (_, _, terminated, truncated, _) = [env.step("right") for _ in range(3)]
    assert (terminated, truncated) == (True, False)


@pytest.mark.parametrize("action", ["jump", "", "up,down", 0, 5, -1, True, 2.0, None])
def test_invalid_actions_raise(action) -> None:
    env = env_at(CORRIDOR)
    with pytest.raises(ValueError, match="invalid action"):
        env.step(action)


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


# --------------------------------------------------------------------------------------------------
# Level: XSB, dict, validation


def test_xsb_round_trip() -> None:
    text = "#######\n#+ * $#\n#     #\n#######"
    level = Level.from_xsb(text)
    assert level.to_xsb() == text
    assert level.player == (1, 1) and level.player in level.targets
    assert level.boxes == {(1, 3), (1, 5)} and level.targets == {(1, 1), (1, 3)}
    assert Level.from_dict(level.to_dict()) == level
    assert level.to_dict()["grid"] == text.split("\n")


def test_xsb_ragged_rows_and_floor_aliases() -> None:
    level = Level.from_xsb("\n  ###\n###@.#\n#-$__#\n######\n")  # blank lines and a short first row
    assert (level.height, level.width) == (4, 6)
    assert level.to_xsb() == "  ### \n###@.#\n# $  #\n######"  # padded with floor
    assert Level.from_xsb(level.to_xsb()) == level


@pytest.mark.parametrize(
    ("xsb", "message"),
    [
        ("#####\n#@@$.#\n#####", "exactly one player, found 2"),
        ("#####\n# $.#\n#####", "exactly one player, found 0"),
        ("######\n#@$$.#\n######", "2 boxes but 1 targets"),
        ("#####\n#@ .#\n#####", "no boxes"),
        ("#####\n#@$x#\n#####", "unknown character 'x'"),
        ("", "empty level"),
    ],
)
def test_level_validation(xsb: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Level.from_xsb(xsb)


def test_level_constructor_validation() -> None:
    with pytest.raises(ValueError, match="outside"):
        Level(3, 3, frozenset(), frozenset({(1, 1)}), frozenset({(1, 2)}), (5, 5))
    with pytest.raises(ValueError, match="player on a box"):
        Level(3, 3, frozenset(), frozenset({(1, 1)}), frozenset({(1, 2)}), (1, 2))
    with pytest.raises(ValueError, match="boxes on walls"):
        Level(3, 3, frozenset({(1, 2)}), frozenset({(1, 1)}), frozenset({(1, 2)}), (0, 0))


# --------------------------------------------------------------------------------------------------
# Solver, renderer


def test_solve_small_cases() -> None:
    assert solve(Level.from_xsb(CORRIDOR)) == ["right", "right", "right"]
    assert solve(Level.from_xsb("#####\n#@*.#\n#  $#\n#####")) is None  # second box stuck in a corner
    assert solve(Level.from_xsb("#####\n#@ *#\n#####")) == []  # already solved
    # The box sits in a corner that is not a target: a dead square, pruned at once.
    assert solve(Level.from_xsb("######\n#$  @#\n#   .#\n######")) is None
    # Solvable only around the box: needs walking round it.
    level = Level.from_xsb("######\n#    #\n# $@ #\n#.   #\n######")
    solution = solve(level)
    assert solution is not None and replay(level, solution).solved
    assert solve(level, max_nodes=2) is None  # node budget exhausted


def test_render_is_deterministic_with_distinct_colours() -> None:
    level = Level.from_xsb("#####\n#@$.#\n# * #\n#####")
    a, b = render(level, cell=10), render(level, cell=10)
    assert a.size == (50, 40) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    centre = {
        name: a.getpixel((c * 10 + 5, r * 10 + 5))
        for name, (r, c) in {
            "wall": (0, 0),
            "player": (1, 1),
            "box": (1, 2),
            "target": (1, 3),
            "box_on_target": (2, 2),
            "floor": (2, 1),
        }.items()
    }
    assert len(set(centre.values())) == 6, centre


# --------------------------------------------------------------------------------------------------
# Generator: property test over sizes, box counts and seeds


@settings(max_examples=300, deadline=None, derandomize=True)
@given(size=st.sampled_from([6, 7, 8]), num_boxes=st.sampled_from([1, 2, 3]), seed=st.integers(0, 10**6))
def test_generated_levels_are_solved_by_solve_and_env(size: int, num_boxes: int, seed: int) -> None:
    level, solution = generate_level(size, num_boxes, seed)
    assert (level.height, level.width) == (size, size)
    assert len(level.boxes) == len(level.targets) == num_boxes
    assert not level.solved
    assert solution and solution == solve(level)
    env = SokobanEnv(max_steps=len(solution), max_size=size)
    env.reset(options={"level": level})
    results = [env.step(action) for action in solution]
    assert [r[2] for r in results] == [False] * (len(solution) - 1) + [True]  # terminates at the end only
    assert env.level.boxes == level.targets


def test_generator_is_deterministic_and_respects_max_moves() -> None:
    assert generate_level(7, 2, 11) == generate_level(7, 2, 11)
    assert generate_level(7, 2, 11) != generate_level(7, 2, 12)
    for seed in range(10):
        _, solution = generate_level(8, 2, seed, max_moves=6)
        assert 1 <= len(solution) <= 6
    with pytest.raises(ValueError, match="size"):
        generate_level(4, 1, 0)
    with pytest.raises(ValueError, match="num_boxes"):
        generate_level(6, 0, 0)


# --------------------------------------------------------------------------------------------------
# Actions and the Sokoban reward

PARSE_CASES = [
    ("Right, up", ["right", "up"]),
    ("LEFT,down,Up,right", ["left", "down", "up", "right"]),
    ("\\boxed{left, down}", ["left", "down"]),
    ("$\\boxed{Up}$", ["up"]),
    (answer(" right , right "), ["right", "right"]),
    ("right, jump", None),  # invalid word
    ("right,,up", None),  # empty item
    ("", None),
    ("right up", None),  # not comma-separated
    ("1, 2", None),  # ids are for the environment, not the answer
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_actions(text: str, expected: list[str] | None) -> None:
    assert parse_actions(text) == expected


REWARD_CASES = [
    # (completion, expected, why)
    (answer("right, right, right"), 0.5 + 10.7, "solves: 0.5 + (-0.1 -0.1 +10.9)"),
    (answer("\\boxed{Right,Right,Right}"), 11.2, "boxed and capitalised"),
    (answer("left, right, right, right"), 0.5 + 10.6, "a wasted move lowers the env return"),
    (answer("right, right, right, left, left"), 11.2 - 0.2, "actions after the best prefix: -0.1 each"),
    (answer("left, left"), 0.5 - 0.2, "nothing achieved: best is the empty prefix"),
    (answer(", ".join(["left"] * 30)), 0.5 - 1.0, "length term capped at -1"),
    (answer(", ".join(["left"] * 50 + ["right"] * 3)), 0.5 - 1.0, "actions past 50 are not replayed"),
    (answer("right, jump"), 0.0, "invalid action word"),
    ("<think>p</think> <answer>right, right, right</answer>", 0.0, "bad format"),
    ("right, right, right", 0.0, "no tags at all"),
]


@pytest.mark.parametrize(("completion", "expected", "why"), REWARD_CASES, ids=[c[2] for c in REWARD_CASES])
def test_sokoban_reward(completion: str, expected: float, why: str) -> None:
    assert sokoban_reward(completion, Level.from_xsb(CORRIDOR)) == pytest.approx(expected), why


def test_sokoban_reward_partial_progress_and_max_actions() -> None:
    # Two boxes: pushing one onto its target is the best prefix (+1 - 0.1), the rest of the answer walks.
    level = Level.from_xsb("########\n#@$. $.#\n########")
    assert sokoban_reward(answer("right, left"), level) == pytest.approx(0.5 + 0.9 - 0.1)
    # With max_actions=2 the third, solving push of the corridor is never replayed.
    assert sokoban_reward(answer("right, right, right"), Level.from_xsb(CORRIDOR), max_actions=2) == (
        pytest.approx(0.5 + 0.0 - 0.3)
    )


@pytest.mark.filterwarnings("ignore:.*alternative render modes")
def test_gymnasium_env_checker_passes() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(SokobanEnv(size=6, num_boxes=1, render_mode="rgb_array"))
