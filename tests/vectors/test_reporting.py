"""The vector stages' results tables: target_notes (which per-pool targets the table cannot show), the one
table layout (empty cells, the table without near-duplicates) and the vector-baselines table, hand-written."""

from __future__ import annotations

from lmmops.vectors.reporting import NODUP_CAPTION, baselines_markdown, pool_means, results_markdown, target_notes


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


def test_results_markdown_writes_the_caption_the_tables_and_the_notes() -> None:
    text = results_markdown("Caption.", ["pool", "a", "b"], [["p", "1.0", "2.0"], ["params", "3", ""]],
                            nodup=(["pool", "a"], [["p", "-"]]), notes=["A note."])
    assert text == ("Caption.\n\n| pool | a | b |\n|---|---|---|\n| p | 1.0 | 2.0 |\n| params | 3 | |\n"
                    + NODUP_CAPTION + "| pool | a |\n|---|---|\n| p | - |\n\nA note.\n")
    assert results_markdown("C.", ["pool"], [["p"]]) == "C.\n\n| pool |\n|---|\n| p |\n"


def test_baselines_table_and_means_over_the_pools_that_have_a_value() -> None:
    table = {"p": {"zero-shot": 0.5, "lora": 0.75}, "q": {"zero-shot": 0.25, "lora": 1.0}}
    nodup = {"p": {"zero-shot": 0.5, "lora": 1.0}, "q": {}}  # q: every test item a near-duplicate
    assert pool_means(nodup, ["zero-shot", "lora", "icv"]) == {"zero-shot": 0.5, "lora": 1.0}
    text = baselines_markdown(table, ["zero-shot", "lora"], {"lora": 12345}, {"lora": 1.5}, nodup,
                              {"p": (3, 4), "q": (0, 2)})
    assert text == (
        "Test accuracy (%, VQA accuracy) of each baseline per task pool; every choice made on the val split.\n\n"
        "| pool | zero-shot | lora |\n|---|---|---|\n| p | 50.0 | 75.0 |\n| q | 25.0 | 100.0 |\n"
        "| **mean** | **37.5** | **87.5** |\n| trainable params | 0 | 12,345 |\n"
        "| latency vs zero-shot | 1.00x | 1.50x |\n" + NODUP_CAPTION
        + "| pool | zero-shot | lora | test items (of all) |\n|---|---|---|---|\n| p | 50.0 | 100.0 | 3 (of 4) |\n"
        "| q | - | - | 0 (of 2) |\n| **mean** | **50.0** | **100.0** | 3 (of 6) |\n")
    assert NODUP_CAPTION not in baselines_markdown(table, ["zero-shot", "lora"], {}, {})
