"""Tests for lmmops.eval.sokoban: levels, moves and their rewards (gym-sokoban's), replay, solver, reward.

Run: .venv/bin/python -m pytest tests/eval/test_sokoban.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from lmmops.eval.sokoban import Level, parse_actions, replay, sokoban_reward, solve, step

# Player, box, target in a corridor: right x3 solves it (the third push lands the box).
CORRIDOR = "#######\n#@ $ .#\n#######"


def answer(actions: str) -> str:
    return f"<think>plan</think><answer>{actions}</answer>"


# --------------------------------------------------------------------------------------------------
# Moves and their rewards, case by case: (xsb, action, expected reward, expected xsb after, solved)

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
    # last box onto its target: +1 +10 and solved
    ("#######\n#  @$.#\n#######", "right", 10.9, "#######\n#   @*#\n#######", True),
    # player steps off a target onto floor
    ("#####\n#+ $#\n# * #\n#####", "right", -0.1, "#####\n#.@$#\n# * #\n#####", False),
]


@pytest.mark.parametrize(("xsb", "action", "reward", "after", "solved"), STEP_CASES)
def test_step_cases(xsb: str, action: str, reward: float, after: str, solved: bool) -> None:
    level, r, done = step(Level.from_xsb(xsb), action)
    assert r == pytest.approx(reward)
    assert level.to_xsb() == after
    assert done is solved


def test_integer_action_ids_and_case() -> None:
    level = Level.from_xsb("#####\n#   #\n# @ #\n#$. #\n#####")
    for action, player in [(1, (1, 2)), (2, (3, 2)), (3, (2, 1)), (4, (2, 3)), (np.int64(4), (2, 3)), ("LEFT", (2, 1))]:
        assert step(level, action)[0].player == player, action


@pytest.mark.parametrize("action", ["jump", "", "up,down", 0, 5, -1, True, 2.0, None])
def test_invalid_actions_raise(action) -> None:
    with pytest.raises(ValueError, match="invalid action"):
        step(Level.from_xsb(CORRIDOR), action)


def test_replay_stops_when_solved_and_at_max_actions() -> None:
    level = Level.from_xsb(CORRIDOR)
    result = replay(level, ["right"] * 5)
    assert result.solved and result.rewards == pytest.approx([-0.1, -0.1, 10.9])
    assert result.final is not None and result.final.solved
    short = replay(level, ["right"] * 5, max_actions=2)
    assert not short.solved and len(short.rewards) == 2 and short.final.player == (1, 3)


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
# Solver


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
