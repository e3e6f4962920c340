"""Tests for the Sokoban generator and renderer of lmmops.data.synthetic.sokoban (the dataset rows are
covered by test_generators.py).

Run: .venv/bin/python -m pytest tests/data/test_synthetic_sokoban.py -q
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmops.data.synthetic.sokoban import generate_level, render
from lmmops.eval.sokoban import Level, replay, solve

# --------------------------------------------------------------------------------------------------
# Renderer


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
def test_generated_levels_are_solved_by_solve_and_replay(size: int, num_boxes: int, seed: int) -> None:
    level, solution = generate_level(size, num_boxes, seed)
    assert (level.height, level.width) == (size, size)
    assert len(level.boxes) == len(level.targets) == num_boxes
    assert not level.solved
    assert solution and solution == solve(level)
    result = replay(level, solution, max_actions=len(solution))
    assert result.solved and len(result.rewards) == len(solution)  # solved at the end only
    assert result.final is not None and result.final.boxes == level.targets


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
