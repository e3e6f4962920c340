"""Hand-computed checks of the pure analysis helpers in lmmops.eval.analysis that no other test covers."""

from __future__ import annotations

import math

import pytest

from lmmops.eval.analysis import paired_gap


def test_paired_gap_hand_computed() -> None:
    # differences 1, 0, 0, 1: mean 0.5; sample variance (4 * 0.25) / 3 = 1/3; SE sqrt(1/3 / 4) = 0.288675
    gap, se = paired_gap([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert gap == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(1 / 12))
    # identical scores: no gap, no spread
    assert paired_gap([0.3, 1.0], [0.3, 1.0]) == (0.0, 0.0)
    # negative gap (b better), partial VQA scores: d = -0.4, -0.2 -> mean -0.3, sd 0.141421, SE 0.1
    gap, se = paired_gap([0.6, 0.8], [1.0, 1.0])
    assert gap == pytest.approx(-0.3) and se == pytest.approx(0.1)


def test_paired_gap_edges() -> None:
    gap, se = paired_gap([1.0], [0.0])
    assert gap == 1.0 and math.isnan(se)
    with pytest.raises(ValueError, match="same items"):
        paired_gap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_gap([], [])
