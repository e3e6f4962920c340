"""validate_all: a clean synthetic tree passes; one corrupt row per family fails with a report naming the
file, row, item id and field; validation never changes the data tree."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from data_helpers import tree_md5

from lmmops.config import ValidateConfig
from lmmops.data import ValidationReport, validate_all


def _validate(data: Path, *families: str) -> ValidationReport:
    cfg = ValidateConfig(data_dir=data.name, families=families) if families else ValidateConfig(data_dir=data.name)
    return validate_all(cfg, data.parent)


def test_clean_tree_passes(generated: tuple[Path, dict]) -> None:
    data, summary = generated
    before = tree_md5(data)
    report = _validate(data)
    assert report.success, report.format()
    assert report.failures == []
    assert set(report.statistics) == {"vqa", "deepscaler", "multimath", "vermulti", "sokoban", "duplicates"}
    assert set(report.statistics["duplicates"].values()) == {0.0}  # held-out items repeating train items fail
    assert report.rows_checked == sum(summary["totals"][k] for k in
                                      ("vqa_items", "deepscaler_items", "multimodal_items", "sokoban_levels"))
    vqa = report.statistics["vqa"]
    assert vqa["icl_tasks"] == 9 and vqa["near_duplicates"] > 0 and vqa["splits"] == summary["counts"]["vqa"]
    assert vqa["expectations"]["evaluated"] == vqa["expectations"]["successful"] > 10
    assert "PASSED" in report.format()
    assert tree_md5(data) == before


# ----------------------------------------------------------------------------------------------------
# corruptions: (family, edit of the data dir) -> the failure that must be reported


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_jsonl(path: Path, row: int, edit: Callable[[dict], None]) -> None:
    lines = path.read_text().splitlines()
    obj = json.loads(lines[row])
    edit(obj)
    lines[row] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


def _vqa_missing_question(d: Path) -> None:
    _edit_json(d / "vqa/v2_OpenEnded_mscoco_val2014_questions.json", lambda q: q["questions"][3].pop("question"))


def _vqa_nine_answers(d: Path) -> None:
    _edit_json(d / "vqa/v2_mscoco_train2014_annotations.json", lambda a: a["annotations"][7]["answers"].pop())


def _vqa_missing_image(d: Path) -> None:
    q = json.loads((d / "vqa/v2_OpenEnded_mscoco_test2014_questions.json").read_text())["questions"][5]
    (d / f"vqa/test2014/COCO_test2014_{q['image_id']:012d}.png").unlink()


def _vqa_truncated_image(d: Path) -> None:
    q = json.loads((d / "vqa/v2_OpenEnded_mscoco_test2014_questions.json").read_text())["questions"][5]
    path = d / f"vqa/test2014/COCO_test2014_{q['image_id']:012d}.png"
    path.write_bytes(path.read_bytes()[:60])


def _vqa_orphan_annotation(d: Path) -> None:
    def add(a: dict) -> None:
        a["annotations"].append({**a["annotations"][0], "question_id": 999_999_999})

    _edit_json(d / "vqa/v2_mscoco_val2014_annotations.json", add)


def _math_unparseable(d: Path) -> None:
    _edit_jsonl(d / "deepscaler/test.jsonl", 2, lambda r: r.update(answer="\\frac{"))


def _math_wrong_type(d: Path) -> None:
    _edit_jsonl(d / "deepscaler/train.jsonl", 0, lambda r: r.update(level="hard"))


def _multimath_missing_image(d: Path) -> None:
    (d / "multimath/images/train/multimath-train-00004.png").unlink()


def _vermulti_missing_answer(d: Path) -> None:
    _edit_jsonl(d / "vermulti/perce_reason/test.jsonl", 1, lambda r: r.pop("answer"))


def _vermulti_bad_message(d: Path) -> None:
    _edit_jsonl(d / "vermulti/geo/train.jsonl", 3, lambda r: r.update(message="not a chat"))


def _sokoban_wrong_solution(d: Path) -> None:
    _edit_jsonl(d / "sokoban/train.jsonl", 2, lambda r: r.update(solution=r["solution"][:-1]))


def _sokoban_extra_box(d: Path) -> None:
    def add_box(r: dict) -> None:
        grid = r["grid"]
        for i, line in enumerate(grid):
            if " " in line:
                grid[i] = line.replace(" ", "$", 1)
                return

    _edit_jsonl(d / "sokoban/test.jsonl", 0, add_box)


CASES = {
    # name: (family, corruption, file, row, id or None, field, words in the expectation)
    "vqa-missing-field": ("vqa", _vqa_missing_question, "vqa/v2_OpenEnded_mscoco_val2014_questions.json", 3,
                          None, "question", "not null"),
    "vqa-nine-answers": ("vqa", _vqa_nine_answers, "vqa/v2_mscoco_train2014_annotations.json", 7, None,
                         "answers", "exactly 10"),
    "vqa-missing-image": ("vqa", _vqa_missing_image, "vqa/v2_OpenEnded_mscoco_test2014_questions.json", 5, None,
                          "image_id", "image file exists"),
    "vqa-truncated-image": ("vqa", _vqa_truncated_image, "vqa/v2_OpenEnded_mscoco_test2014_questions.json", 5,
                            None, "image_id", "decodes"),
    "vqa-orphan-annotation": ("vqa", _vqa_orphan_annotation, "vqa/v2_mscoco_val2014_annotations.json", 30,
                              "999999999", "question_id", "has a question"),
    "deepscaler-unparseable": ("deepscaler", _math_unparseable, "deepscaler/test.jsonl", 2,
                               "deepscaler/test.jsonl:2", "answer", "math-verify"),
    "deepscaler-wrong-type": ("deepscaler", _math_wrong_type, "deepscaler/train.jsonl", 0,
                              "deepscaler/train.jsonl:0", "level", "type int"),
    "multimath-missing-image": ("multimath", _multimath_missing_image, "multimath/train.jsonl", 4,
                                "multimath-train-00004", "message", "image file exists"),
    "vermulti-missing-field": ("vermulti", _vermulti_missing_answer, "vermulti/perce_reason/test.jsonl", 1,
                               "perce_reason-test-00001", "answer", "not null"),
    "vermulti-bad-message": ("vermulti", _vermulti_bad_message, "vermulti/geo/train.jsonl", 3,
                             "geo-train-00003", "message", "chat list"),
    "sokoban-unsolved": ("sokoban", _sokoban_wrong_solution, "sokoban/train.jsonl", 2, "sokoban-train-00002",
                         "solution", "solves the level"),
    "sokoban-boxes-targets": ("sokoban", _sokoban_extra_box, "sokoban/test.jsonl", 0, "sokoban-test-00000",
                              "grid", "as many boxes as targets"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_row_fails_naming_file_row_field(case: str, data_copy: Path) -> None:
    family, corrupt, file, row, item_id, field, words = CASES[case]
    corrupt(data_copy)
    before = tree_md5(data_copy)
    report = _validate(data_copy, family)
    assert tree_md5(data_copy) == before  # read-only, also when it fails
    assert not report.success
    hits = [f for f in report.failures if (f.file, f.row, f.field) == (file, row, field)]
    assert hits, report.format()
    assert any(words in f.expectation for f in hits), [f.expectation for f in hits]
    if item_id is not None:
        assert hits[0].item_id == item_id
    # the report only blames the corrupted row
    assert {(f.file, f.row) for f in report.failures} == {(file, row)}, report.format()
    text = report.format()
    assert "FAILED" in text and f"{file} row {row}" in text and repr(field) in text


def test_broken_json_and_missing_family_are_reported(data_copy: Path) -> None:
    (data_copy / "deepscaler/test.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{"problem": \n')
    for p in sorted((data_copy / "sokoban").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (data_copy / "sokoban").rmdir()
    before = tree_md5(data_copy)
    report = _validate(data_copy, "deepscaler", "sokoban")
    assert tree_md5(data_copy) == before
    assert not report.success
    by_file = {f.file: f for f in report.failures}
    assert by_file["deepscaler/test.jsonl"].row == 1
    assert "not valid JSON" in by_file["deepscaler/test.jsonl"].detail
    assert by_file["sokoban/train.jsonl"].expectation == "split present"
    assert "sokoban/test.jsonl" in by_file


def test_missing_data_dir_is_a_failure(tmp_path: Path) -> None:
    report = validate_all(ValidateConfig(data_dir="nope"), tmp_path)
    assert not report.success and "data directory exists" in report.format()
    assert not (tmp_path / "nope").exists()
