"""Loaders: the real public layouts (hand-written samples in tests/data/samples) and the synthetic tree,
strict typed records with errors naming file/row/field, and the lenient tabular views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_helpers import SAMPLES

from lmmops.config import ValidateConfig
from lmmops.data import (
    DataError,
    available_splits,
    load_deepscaler,
    load_multimath,
    load_sokoban,
    load_vermulti,
    load_vqa,
    tabular_view,
    tabular_views,
)
from lmmops.data.loaders import vqa_files
from lmmops.data.validation import validate_family
from lmmops.eval.sokoban import solve

# ----------------------------------------------------------------------------------------------------
# hand-written samples in the public layouts


def test_vqav2_sample() -> None:
    items = load_vqa(SAMPLES, "val")
    assert [i.question_id for i in items] == [42000, 42001, 42002]
    first = items[0]
    assert first.question == "What color is the umbrella?"
    assert first.multiple_choice_answer == "red" and len(first.answers) == 10
    assert first.answers[8].answer == "dark red" and first.answers[8].answer_confidence == "maybe"
    assert first.image_path == SAMPLES / "vqa/val2014/COCO_val2014_000000000042.jpg"
    assert {i.answer_type for i in items} == {"other", "yes/no", "number"}
    assert not any(i.is_icl for i in items) and all(i.near_duplicate_of is None for i in items)


def test_okvqa_file_names_are_found(tmp_path: Path) -> None:
    shutil.copytree(SAMPLES / "vqa", tmp_path / "vqa")
    (tmp_path / "vqa/v2_OpenEnded_mscoco_val2014_questions.json").rename(
        tmp_path / "vqa/OpenEnded_mscoco_val2014_questions.json")
    (tmp_path / "vqa/v2_mscoco_val2014_annotations.json").rename(tmp_path / "vqa/mscoco_val2014_annotations.json")
    assert list(vqa_files(tmp_path)) == ["val"]
    assert len(load_vqa(tmp_path, "val")) == 3


def test_deepscaler_sample() -> None:
    items = load_deepscaler(SAMPLES, "train")
    assert [i.answer for i in items] == ["720", "5\\sqrt{2}", "\\frac{1}{2}"]
    assert items[0].id == "deepscaler/train.jsonl:0"  # DeepScaleR rows have no id: file and row stand in
    assert items[0].level is None and "\\boxed{720}" in items[0].solution


def test_deepscaler_json_list_is_read_too(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (SAMPLES / "deepscaler/train.jsonl").read_text().splitlines()]
    (tmp_path / "deepscaler").mkdir()
    (tmp_path / "deepscaler/train.json").write_text(json.dumps(rows, indent=2))
    assert [i.problem for i in load_deepscaler(tmp_path, "train")] == [r["problem"] for r in rows]


def test_vermulti_sample_resolves_images_relative_to_data_dir_or_file() -> None:
    items = load_vermulti(SAMPLES, "geo", "train")
    assert [i.answer for i in items] == ["$\\boxed{60}$", "$\\boxed{B}$"]
    assert items[0].images == (SAMPLES / "vermulti/geo/images/q1.png",)  # relative to the data dir
    assert items[1].images == (SAMPLES / "vermulti/geo/images/q2.png",)  # relative to the JSONL file
    assert all(p.is_file() for i in items for p in i.images)
    assert "Choices:" in items[1].question and items[0].message[0]["role"] == "user"


def test_sokoban_sample() -> None:
    (item,) = load_sokoban(SAMPLES, "train")
    assert item.id == "level-0001" and item.solution == ("right",)
    assert solve(item.level()) == ["right"]
    assert item.image_path.is_file()


@pytest.mark.parametrize("family", ["vqa", "deepscaler", "vermulti", "sokoban"])
def test_samples_pass_their_suites(family: str) -> None:
    failures, stats = validate_family(family, tabular_view(SAMPLES, family), SAMPLES, ValidateConfig())
    assert failures == []
    assert stats["rows"] == {"vqa": 3, "deepscaler": 3, "vermulti": 2, "sokoban": 1}[family]


# ----------------------------------------------------------------------------------------------------
# the synthetic tree through the same loaders


def test_synthetic_tree_loads(generated: tuple[Path, dict]) -> None:
    data, summary = generated
    counts = summary["counts"]
    for split, n in counts["vqa"].items():
        items = load_vqa(data, split)
        assert len(items) == n and all(i.image_path.is_file() for i in items)
    for split, n in counts["deepscaler"].items():
        assert len(load_deepscaler(data, split)) == n
    for split, n in counts["multimath"].items():
        assert len(load_multimath(data, split)) == n
    for subset in ("geo", "perce_reason"):
        for split, n in counts[f"vermulti_{subset}"].items():
            assert len(load_vermulti(data, subset, split)) == n
    for split, n in counts["sokoban"].items():
        assert len(load_sokoban(data, split)) == n
    assert available_splits(data, "vermulti") == {"geo": ["test", "train"], "perce_reason": ["test", "train"]}


def test_tabular_views_have_one_row_per_item_and_scalar_cells(generated: tuple[Path, dict]) -> None:
    data, summary = generated
    views = tabular_views(data)
    assert set(views) == {"vqa", "deepscaler", "multimath", "vermulti", "sokoban"}
    assert len(views["vqa"]) == summary["totals"]["vqa_items"]
    assert len(views["vermulti"]) == sum(summary["counts"]["vermulti_geo"].values()) + \
        sum(summary["counts"]["vermulti_perce_reason"].values())
    for name, df in views.items():
        assert {"split", "id", "_file", "_row"} <= set(df.columns), name
        for col in df.columns:  # lists and dicts are JSON text: the frame logs and hashes cleanly
            assert not any(isinstance(v, list | dict) for v in df[col]), (name, col)


# ----------------------------------------------------------------------------------------------------
# corrupt rows: strict loaders name the place, the views keep going


def _rewrite_jsonl(path: Path, row: int, edit) -> None:
    lines = path.read_text().splitlines()
    obj = json.loads(lines[row])
    edit(obj)
    lines[row] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


def test_missing_field_raises_in_strict_loader_and_is_null_in_the_view(data_copy: Path) -> None:
    _rewrite_jsonl(data_copy / "deepscaler/train.jsonl", 2, lambda r: r.pop("problem"))
    with pytest.raises(DataError) as err:
        load_deepscaler(data_copy, "train")
    assert (err.value.file, err.value.row, err.value.field) == ("deepscaler/train.jsonl", 2, "problem")
    assert "deepscaler/train.jsonl: row 2" in str(err.value)
    df = tabular_view(data_copy, "deepscaler")
    row = df[(df["_file"] == "deepscaler/train.jsonl") & (df["_row"] == 2)].iloc[0]
    assert row["problem"] is None and isinstance(row["answer"], str)


def test_vqa_annotation_problems_name_the_annotations_file(data_copy: Path) -> None:
    path = data_copy / "vqa/v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][4]["answers"] = "red"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_vqa(data_copy, "val")
    assert (err.value.file, err.value.row, err.value.field) == ("vqa/v2_mscoco_val2014_annotations.json", 4, "answers")
    df = tabular_view(data_copy, "vqa")
    assert df[(df["split"] == "val") & (df["_ann_row"] == 4)]["n_answers"].iloc[0] is None


def test_broken_json_line_is_an_error_naming_file_and_row(data_copy: Path) -> None:
    path = data_copy / "sokoban/test.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        tabular_view(data_copy, "sokoban")
    assert err.value.file == "sokoban/test.jsonl" and err.value.row == 1
    assert "line 2 is not valid JSON" in str(err.value)


def test_a_row_that_is_not_an_object_becomes_nulls(data_copy: Path) -> None:
    path = data_copy / "multimath/test.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = "[1, 2, 3]"
    path.write_text("\n".join(lines) + "\n")
    df = tabular_view(data_copy, "multimath")
    row = df[(df["_file"] == "multimath/test.jsonl") & (df["_row"] == 0)].iloc[0]
    assert row["message"] is None and row["answer"] is None and row["id"] == "multimath/test.jsonl:0"
