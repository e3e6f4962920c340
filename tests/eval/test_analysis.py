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


def test_mean_without_the_flagged_items_hand_computed() -> None:
    from lmmops.eval.analysis import mean_se, mean_without, split_by_mask

    scores = [1.0, 0.0, 0.6, 1.0, 0.0]
    dup = [False, True, False, True, False]
    assert split_by_mask(scores, dup) == ([0.0, 1.0], [1.0, 0.6, 0.0])
    # kept 1.0, 0.6, 0.0: mean 1.6 / 3; deviations 7/15, 1/15, -8/15 -> squares 114/225; variance 57/225;
    # SE sqrt(57/225 / 3) = sqrt(19) / 15
    m, se, n = mean_without(scores, dup)
    assert n == 3 and m == pytest.approx(1.6 / 3) and se == pytest.approx(math.sqrt(19) / 15)
    # nothing flagged: the plain mean (what real data, with no near-duplicates, reports twice)
    m, se, n = mean_without(scores, [False] * 5)
    assert n == 5 and m == pytest.approx(0.52) and (m, se) == mean_se(scores)
    # one item left: no standard error; none left: no mean
    m, se, n = mean_without([1.0, 0.0], [True, False])
    assert (m, n) == (0.0, 1) and math.isnan(se)
    m, se, n = mean_without([1.0], [True])
    assert n == 0 and math.isnan(m) and math.isnan(se)
    with pytest.raises(ValueError, match="mask of 1"):
        mean_without([1.0, 0.0], [True])
