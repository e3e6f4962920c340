"""Cross-split duplicates (lmmops.data.duplicates) and their wiring: validate_all fails on each held-out item that
repeats a train item, naming file, row, id and the train item; the generate stage's metrics and `lmmops report
--json` carry the counts.

The data tree is written by hand in the loaders' formats, so every expected count is known: in multimath, a test
item with a train item's text and pixels in another (re-saved) file counts as same_item; a test item with a generic
text ("What is its area?") that train answers in two ways does not count; a test item whose text occurs in train
only with its answer counts as same_text_answer. Geo and Sokoban repeat one train item each; perce_reason none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lmmops import report, stages
from lmmops.config import ValidateConfig
from lmmops.data import validate_all
from lmmops.data.duplicates import duplicate_counts, duplicate_items, duplicate_pairs
from lmmops.data.validation import DUPLICATE_EXPECTATIONS, Failure

from testutil import tiny_config

AREA, SIDES = "What is its area?", "How many sides does the polygon have?"
SAME_ITEM, SAME_TEXT = DUPLICATE_EXPECTATIONS["same_item"], DUPLICATE_EXPECTATIONS["same_text_answer"]
SAME_BOARD = "no held-out level repeats a train level (same board)"

# (id, question text, image colour, answer); a "+" on the colour re-saves that picture into a file of other bytes.
MULTIMATH = {
    "train": [("t0", AREA, "red", "16"), ("t1", AREA, "green", "9"), ("t2", SIDES, "yellow", "5"),
              ("t3", "Find x.", "blue", "3")],
    "test": [
        ("e1", AREA, "purple", "16"),  # generic text, train answers 16 and 9: not a duplicate
        ("e0", AREA, "red+", "16"),  # t0's text and pixels, another file: same_item (t0); train's answer to AREA varies
        ("e3", SIDES, "cyan", "6"),  # t2's text with another answer: not a duplicate
        ("e2", SIDES, "orange", "5"),  # t2's text, which train answers only with 5: same_text_answer (t2)
        ("e4", "Find y.", "green", "2"),  # t1's pixels with another text: not a duplicate
    ],
}
GEO = {"train": [("g0", "Find the angle ABC.", "navy", "60")],
       "test": [("g1", "Find the angle XYZ.", "olive", "30"),
                ("g2", "Find the angle ABC.", "navy+", "60")]}  # g0 again: same_item and same_text_answer
PERCE = {"train": [("p0", "How many circles are there?", "teal", "4")],
         "test": [("p1", "How many squares are there?", "maroon", "2")]}
BOARD_A, BOARD_B, BOARD_C = ["#####", "#@$.#", "#####"], ["######", "#@$ .#", "######"], ["#####", "#.$@#", "#####"]
# (id, grid, solution)
SOKOBAN = {"train": [("s0", BOARD_A, ["right"]), ("s1", BOARD_B, ["right", "right"])],
           "test": [("s3", BOARD_C, ["left"]), ("s2", BOARD_A, ["right"])]}  # s2: s0's board
DUPLICATE_IDS = {"e0", "e2", "g2", "s2"}


def _image(data: Path, rel: str, colour: str) -> None:
    path = data / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    # compress_level 0 vs 9: the same pixels in files of different bytes
    Image.new("RGB", (8, 8), colour.rstrip("+")).save(path, compress_level=0 if colour.endswith("+") else 9)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _multimodal(data: Path, family_dir: str, items: dict[str, list[tuple[str, str, str, str]]],
                duplicates: bool) -> None:
    for split, rows in items.items():
        out = []
        for item_id, text, colour, answer in rows:
            if item_id in DUPLICATE_IDS and not duplicates:
                continue
            rel = f"{family_dir}/images/{split}/{item_id}.png"
            _image(data, rel, colour)
            message = [{"role": "user", "content": [{"type": "image", "image": rel},
                                                    {"type": "text", "text": f"<image>{text}"}]}]
            out.append({"id": item_id, "message": json.dumps(message), "answer": f"$\\boxed{{{answer}}}$"})
        _write_jsonl(data / family_dir / f"{split}.jsonl", out)


def write_tree(data: Path, *, duplicates: bool) -> Path:
    """The hand-made tree: with `duplicates`, e0, e2, g2 and s2 repeat train items; without, they are left out."""
    _multimodal(data, "multimath", MULTIMATH, duplicates)
    _multimodal(data, "vermulti/geo", GEO, duplicates)
    _multimodal(data, "vermulti/perce_reason", PERCE, duplicates)
    for split, levels in SOKOBAN.items():
        rows = []
        for level_id, grid, solution in levels:
            if level_id in DUPLICATE_IDS and not duplicates:
                continue
            rel = f"sokoban/images/{split}/{level_id}.png"
            _image(data, rel, "gray")
            rows.append({"id": level_id, "grid": grid, "height": len(grid), "width": len(grid[0]), "num_boxes": 1,
                         "solution": solution, "image": rel})
        _write_jsonl(data / "sokoban" / f"{split}.jsonl", rows)
    return data


EXPECTED_COUNTS = {
    "duplicates/same_item/multimath/test": 1.0, "duplicates/same_text_answer/multimath/test": 1.0,
    "duplicates/same_item/geo/test": 1.0, "duplicates/same_text_answer/geo/test": 1.0,
    "duplicates/same_item/perce_reason/test": 0.0, "duplicates/same_text_answer/perce_reason/test": 0.0,
    "duplicates/same_item/sokoban/test": 1.0,
}


@pytest.fixture
def with_duplicates(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", duplicates=True)


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data", duplicates=False)


def _validate(data: Path):
    return validate_all(ValidateConfig(data_dir=data.name, families=("multimath", "vermulti", "sokoban")), data.parent)


def test_counts_ids_and_train_ids(with_duplicates: Path):
    data = with_duplicates
    # the re-saved copy really is another file with the same picture
    assert (data / "multimath/images/test/e0.png").read_bytes() != (data / "multimath/images/train/t0.png").read_bytes()
    assert duplicate_counts(data) == EXPECTED_COUNTS
    assert duplicate_items(data) == {
        ("same_item", "multimath", "test"): ["e0"], ("same_text_answer", "multimath", "test"): ["e2"],
        ("same_item", "geo", "test"): ["g2"], ("same_text_answer", "geo", "test"): ["g2"],
        ("same_item", "perce_reason", "test"): [], ("same_text_answer", "perce_reason", "test"): [],
        ("same_item", "sokoban", "test"): ["s2"],
    }
    assert duplicate_pairs(data, ["multimath", "sokoban"]) == {
        ("same_item", "multimath", "test"): [("e0", "t0")], ("same_text_answer", "multimath", "test"): [("e2", "t2")],
        ("same_item", "sokoban", "test"): [("s2", "s0")],
    }


def test_clean_tree_counts_zero_and_validates(clean: Path):
    assert duplicate_counts(clean) == dict.fromkeys(EXPECTED_COUNTS, 0.0)
    result = _validate(clean)
    assert result.success, result.format()
    assert result.statistics["duplicates"] == dict.fromkeys(EXPECTED_COUNTS, 0.0)


def test_no_train_split_gives_no_count(clean: Path):
    for family_dir in ("multimath", "vermulti/geo", "vermulti/perce_reason", "sokoban"):
        (clean / family_dir / "train.jsonl").unlink()
    assert duplicate_counts(clean) == {}


def test_validate_fails_on_each_duplicate(with_duplicates: Path):
    result = _validate(with_duplicates)
    assert not result.success
    # rows are 0-based in the file, as for every other failure
    assert sorted(result.failures, key=lambda f: (f.file, f.row, f.expectation)) == sorted([
        Failure("multimath", "multimath/test.jsonl", 1, "e0", "message", SAME_ITEM, "repeats train item t0"),
        Failure("multimath", "multimath/test.jsonl", 3, "e2", "message", SAME_TEXT,
                 "the question text of train item t2, whose answer it has"),
        Failure("vermulti", "vermulti/geo/test.jsonl", 1, "g2", "message", SAME_ITEM, "repeats train item g0"),
        Failure("vermulti", "vermulti/geo/test.jsonl", 1, "g2", "message", SAME_TEXT,
                 "the question text of train item g0, whose answer it has"),
        Failure("sokoban", "sokoban/test.jsonl", 1, "s2", "grid", SAME_BOARD, "the board of train level s0"),
    ], key=lambda f: (f.file, f.row, f.expectation))
    assert result.statistics["duplicates"] == EXPECTED_COUNTS
    text = result.format()
    assert "FAILED" in text and "same_item/multimath/test=1" in text
    assert "multimath/test.jsonl row 1 (id e0) field 'message'" in text


def test_generate_metrics_and_report_carry_the_counts(project: Path, capsys: pytest.CaptureFixture[str]):
    """The generate stage on a tree it did not write (synthetic false: it only versions and counts it, and a tree
    outside the project top is not dvc-added) logs the counts as metrics; `lmmops report --json` shows them."""
    write_tree(project / "hand" / "data", duplicates=True)
    metrics = stages.run_stage("generate", tiny_config("generate", out_dir="hand/data", synthetic=False), root=project)
    assert {k: v for k, v in metrics.items() if k.startswith("duplicates/")} == EXPECTED_COUNTS
    written = json.loads((project / "metrics/generate.json").read_text())
    assert {k: v for k, v in written.items() if k.startswith("duplicates/")} == EXPECTED_COUNTS
    assert report.collect(project)["duplicates"] == EXPECTED_COUNTS
    assert report.print_report(project, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == EXPECTED_COUNTS
    assert report.print_report(project) == 0
    assert "same_item/multimath/test=1" in capsys.readouterr().out


def test_report_has_no_counts_before_generate(project: Path):
    assert report.collect(project)["duplicates"] is None
