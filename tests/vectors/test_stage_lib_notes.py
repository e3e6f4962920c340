"""target_notes: which per-pool targets the table cannot show, hand-computed cases."""

from __future__ import annotations

from lmmops.vectors.stage_lib import target_notes


def test_notes_name_the_pools_where_the_teacher_gains_too_little_or_the_test_is_too_small() -> None:
    metrics = {
        "icl_acc/a": 0.90, "zero_shot_acc/a": 0.20, "test_items/a": 40.0,  # teacher +70: no note
        "icl_acc/b": 0.64, "zero_shot_acc/b": 0.654, "test_items/b": 78.0,  # teacher -1.4
        "icl_acc/c": 0.571, "zero_shot_acc/c": 0.286, "test_items/c": 14.0,  # teacher +28.5, 14 items
    }
    notes = target_notes(metrics, ["a", "b", "c"], 16, "LIVE")
    assert len(notes) == 2
    assert "16-shot ICL itself gains less than 30 points" in notes[0]
    assert "b (-1.4), c (+28.5)" in notes[0] and "a (" not in notes[0]
    assert "fewer than 20 test items (c)" in notes[1]


def test_no_notes_when_every_target_is_readable() -> None:
    metrics = {"icl_acc/a": 0.9, "zero_shot_acc/a": 0.5, "test_items/a": 25.0}
    assert target_notes(metrics, ["a"], 8, "MimIC") == []
