"""Synthetic generators: determinism, atomic writes, and the properties later stages rely on (ICL tasks
only identifiable from demonstrations, near-duplicates across splits, exact answers, solvable levels)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from data_helpers import SMALL, tree_md5
from PIL import Image

from lmmops.config import GenerateConfig, VQAGenConfig
from lmmops.data import (
    ICL_QUESTION,
    ICL_TASKS,
    generate_all,
    get_icl_task,
    group_by_task,
    load_deepscaler,
    load_multimath,
    load_sokoban,
    load_vermulti,
    load_vqa,
    load_vqa_scenes,
    tasks_sharing_vocabulary,
)
from lmmops.data import generate as generate_module
from lmmops.data.synthetic.scenes import COLOUR_RGB, COLOURS, POSITIONS, SHAPES
from lmmops.eval.scoring import format_reward


def test_same_config_gives_byte_identical_trees(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    generate_all(SMALL, tmp_path, progress=False)
    again = tree_md5(tmp_path / "data")
    assert again == tree_md5(generated[0])
    assert len(again) == generated[1]["totals"]["files"]


def test_another_seed_gives_other_data(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    generate_all(dataclasses.replace(SMALL, seed=4, test_seed=5), tmp_path, progress=False)
    other = tree_md5(tmp_path / "data")
    first = tree_md5(generated[0])
    changed = [f for f in first if f != "manifest.json" and other.get(f) != first[f]]
    assert len(changed) > 0.9 * (len(first) - 1)


def test_test_seed_moves_only_the_test_splits(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    generate_all(dataclasses.replace(SMALL, test_seed=SMALL.test_seed + 1), tmp_path, progress=False)
    other = tree_md5(tmp_path / "data")
    first = tree_md5(generated[0])
    def is_test(f: str) -> bool:
        return "test" in f.split("/")[-1] or "/test" in f

    kept = {f for f in first if not is_test(f) and f != "manifest.json"}
    assert kept == {f for f in other if not is_test(f) and f != "manifest.json"}
    assert all(other[f] == first[f] for f in kept)  # train and val are byte-identical
    changed = {f for f in first if is_test(f) and other.get(f) != first[f]}
    # every family's test split moved (near-duplicates copy train, so the VQA split moves as a whole)
    for test_file in ("vqa/v2_OpenEnded_mscoco_test2014_questions.json", "deepscaler/test.jsonl",
                      "multimath/test.jsonl", "vermulti/geo/test.jsonl", "vermulti/perce_reason/test.jsonl",
                      "sokoban/test.jsonl"):
        assert test_file in changed, test_file


def test_summary_and_manifest(generated: tuple[Path, dict]) -> None:
    data, summary = generated
    assert summary["counts"]["vqa"] == {"train": 120, "val": 30, "test": 30}
    assert summary["counts"]["deepscaler"] == {"train": 10, "test": 5}
    assert summary["counts"]["vermulti_geo"] == {"train": 8, "test": 4}
    assert summary["counts"]["sokoban"] == {"train": 4, "test": 2}
    assert summary["totals"] == {"vqa_items": 180, "deepscaler_items": 15, "multimodal_items": 30,
                                 "sokoban_levels": 6, "files": summary["files"]}
    assert summary["file_list"] == sorted(tree_md5(data)) and summary["files"] == len(summary["file_list"])
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["synthetic"] is True and "out_dir" not in manifest["config"]
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((data / rel).read_bytes()).hexdigest() == sha


def test_generate_replaces_the_tree_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    tiny = GenerateConfig(vqa=VQAGenConfig(train=9, val=3, test=3))
    stale = tmp_path / "data" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("old")
    generate_all(dataclasses.replace(SMALL, vqa=tiny.vqa), tmp_path, progress=False)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_generate_failure_keeps_the_old_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "data" / "keep.txt"
    old.parent.mkdir()
    old.write_text("previous version")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate_module, "generate_deepscaler", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_all(SMALL, tmp_path, progress=False)
    assert old.read_text() == "previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.txt"]


def test_invalid_config_is_rejected_before_writing(tmp_path: Path) -> None:
    bad = dataclasses.replace(SMALL, vqa=VQAGenConfig(icl_task_share=1.5))
    with pytest.raises(ValueError, match=r"vqa\.icl_task_share"):
        generate_all(bad, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# ICL task families


def test_icl_task_family_design() -> None:
    assert len(ICL_TASKS) == 9
    values = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS}
    for task in ICL_TASKS:
        assert task.name == f"icl/{task.attribute}/{task.lexicon}"
        assert [v for v, _ in task.mapping] == list(values[task.attribute])
        assert len(task.vocabulary) == 4  # a bijection: the answer determines the attribute value
    en_words = {w for t in ICL_TASKS if t.lexicon == "en" for w in t.vocabulary}
    code_words = {w for t in ICL_TASKS if t.lexicon == "code" for w in t.vocabulary}
    assert not en_words & code_words
    for task in ICL_TASKS:
        if task.lexicon == "code":
            assert tasks_sharing_vocabulary(task.name) == ()  # one demo identifies a code task
            assert task.fixed_points == ()
        else:
            other = "alias" if task.lexicon == "en" else "en"
            assert tasks_sharing_vocabulary(task.name) == (f"icl/{task.attribute}/{other}",)
            if task.lexicon == "alias":
                assert len(task.fixed_points) == 2  # demos on these values cannot tell en from alias
                # the other two have words of their own: a demo on one of them tells the twins apart by its word
                own = set(task.vocabulary) - set(get_icl_task(f"icl/{task.attribute}/en").vocabulary)
                assert len(own) == 2 and not own & (en_words | code_words)
    # The same image gets different answers under different tasks: only demos reveal the rule.
    answers = {t.name: t.answer("red", "circle", "top right") for t in ICL_TASKS}
    assert len(set(answers.values())) == 9
    assert get_icl_task("icl/colour/alias").answer("red", "circle", "top left") == "crimson"
    assert get_icl_task("icl/colour/alias").answer("blue", "circle", "top left") == "blue"  # a fixed point
    assert get_icl_task("icl/shape/alias").answer("red", "square", "top left") == "box"
    assert get_icl_task("icl/position/alias").answer("red", "circle", "top right") == "northeast"
    assert get_icl_task("icl/position/alias").answer("red", "circle", "top left") == "top left"


def _bayes_accuracy(shots: int, lexicon: str | None = None) -> float:
    """Exact accuracy of the Bayes-optimal learner with `shots` demos (0 or 1) of a uniformly drawn task."""
    images = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    tasks = [t for t in ICL_TASKS if lexicon is None or t.lexicon == lexicon]
    total = n = 0.0
    for task in tasks:
        for demo in images if shots else [None]:
            consistent = [u for u in ICL_TASKS if demo is None or u.answer(*demo) == task.answer(*demo)]
            for query in images:
                votes: dict[str, int] = defaultdict(int)
                for u in consistent:
                    votes[u.answer(*query)] += 1
                best = max(votes.values())
                guesses = [a for a, v in votes.items() if v == best]
                total += (task.answer(*query) in guesses) / len(guesses)
                n += 1
    return total / n


def test_icl_needs_demonstrations_and_some_tasks_need_several() -> None:
    assert _bayes_accuracy(0) < 0.3  # the generic question alone does not say which rule applies
    assert _bayes_accuracy(1, "code") == 1.0  # one demo identifies a code task
    one_shot_en = _bayes_accuracy(1, "en")
    assert 0.8 < one_shot_en < 0.9  # en/alias demos on fixed points stay ambiguous: more shots help


def _pixel_attributes(path: Path) -> tuple[str, str]:
    """Colour and quadrant of the single shape in an ICL image, read from the pixels."""
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    grey = (px.max(axis=2) - px.min(axis=2)) < 10  # background is grey; all shape colours are saturated
    ys, xs = np.nonzero(~grey)
    assert len(ys) > 0
    mean = px[~grey].mean(axis=0)
    colour = min(COLOURS, key=lambda c: float(np.sum((mean - np.array(COLOUR_RGB[c])) ** 2)))
    h, w = grey.shape
    row = "top" if ys.mean() < h / 2 else "bottom"
    col = "left" if xs.mean() < w / 2 else "right"
    return colour, f"{row} {col}"


def test_icl_answer_is_a_function_of_image_attributes_and_task(generated: tuple[Path, dict]) -> None:
    data, _ = generated
    rule: dict[tuple[str, str, str, str], str] = {}
    seen_tasks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for split in ("train", "val", "test"):
        scenes = load_vqa_scenes(data, split)
        for item in load_vqa(data, split):
            if not item.is_icl:
                assert item.question != ICL_QUESTION
                continue
            assert item.question == ICL_QUESTION  # identical across tasks: the task is only in the demos
            assert item.answer_type == "other"
            assert set(item.answer_strings) == {item.multiple_choice_answer}  # all 10 agree
            scene = scenes[item.image_id]
            assert len(scene.objects) == 1 and scene.text is None
            obj = scene.objects[0]
            assert _pixel_attributes(item.image_path) == (obj.colour, obj.position)
            key = (item.question_type, obj.colour, obj.shape, obj.position)
            assert rule.setdefault(key, item.multiple_choice_answer) == item.multiple_choice_answer
            assert get_icl_task(item.question_type).answer(obj.colour, obj.shape, obj.position) == \
                item.multiple_choice_answer
            if item.near_duplicate_of is None:
                seen_tasks[split][item.question_type] += 1
    pools = group_by_task(load_vqa(data, "train"))
    assert list(pools) == [t.name for t in ICL_TASKS]
    assert sum(len(p) for p in pools.values()) == sum(seen_tasks["train"].values())
    for split, counts in seen_tasks.items():
        assert set(counts) == {t.name for t in ICL_TASKS}, split
        assert max(counts.values()) - min(counts.values()) <= 1  # tasks are assigned round-robin


def test_ordinary_vqa_annotators_mostly_agree_and_sometimes_disagree(generated: tuple[Path, dict]) -> None:
    items = [i for i in load_vqa(generated[0], "train") if not i.is_icl]
    assert {i.question_type for i in items} == {"what color is the", "what shape is the", "how many",
                                                 "where is the", "is there a", "what number is"}
    disagreeing = 0
    for item in items:
        counts = {a: item.answer_strings.count(a) for a in set(item.answer_strings)}
        assert len(item.answers) == 10
        assert max(counts, key=counts.get) == item.multiple_choice_answer
        assert counts[item.multiple_choice_answer] >= 4
        assert sorted(counts.values())[-2:-1] < [counts[item.multiple_choice_answer]]  # a strict majority
        assert {a.answer_confidence for a in item.answers} <= {"yes", "maybe", "no"}
        disagreeing += len(counts) > 1
    assert 0.3 * len(items) < disagreeing < len(items)


def test_near_duplicates_copy_a_train_item_with_a_perturbed_image(generated: tuple[Path, dict]) -> None:
    data, _ = generated
    train = {i.question_id: i for i in load_vqa(data, "train")}
    train_scenes = load_vqa_scenes(data, "train")
    for split in ("val", "test"):
        items = load_vqa(data, split)
        scenes = load_vqa_scenes(data, split)
        dups = [i for i in items if i.near_duplicate_of is not None]
        assert len(dups) == round(0.2 * len(items))
        for dup in dups:
            src = train[dup.near_duplicate_of]
            assert (dup.question, dup.question_type, dup.answers) == (src.question, src.question_type, src.answers)
            a, b = scenes[dup.image_id], train_scenes[src.image_id]
            assert [(o.shape, o.colour, o.position) for o in a.objects] == \
                [(o.shape, o.colour, o.position) for o in b.objects]
            pairs = list(zip(a.objects, b.objects, strict=True))
            if a.text is not None:
                pairs.append((a.text, b.text))
            shifts = {(o.dx - p.dx, o.dy - p.dy) for o, p in pairs}
            assert len(shifts) == 1 and max(abs(v) for v in shifts.pop()) == 1  # everything moved by 1 px
            assert dup.image_path.read_bytes() != src.image_path.read_bytes()


# ----------------------------------------------------------------------------------------------------
# other families


def test_deepscaler_rows_have_exact_answers_and_think_answer_solutions(generated: tuple[Path, dict]) -> None:
    items = load_deepscaler(generated[0], "train")
    assert {i.level for i in items} == {1, 2, 3, 4, 5}
    for item in items:
        assert format_reward(item.solution) == 1.0
        assert item.solution.endswith(f"<answer>$\\boxed{{{item.answer}}}$</answer>")


def test_multimodal_rows_match_the_vermulti_format(generated: tuple[Path, dict]) -> None:
    data, _ = generated
    rows = [json.loads(line) for line in (data / "vermulti/geo/train.jsonl").read_text().splitlines()]
    assert all(isinstance(r["message"], str) for r in rows)  # a JSON string, as in the LMM-R1 data
    items = [*load_multimath(data, "train"), *load_vermulti(data, "geo", "train"),
             *load_vermulti(data, "perce_reason", "test")]
    letters = 0
    for item in items:
        assert item.answer.startswith("$\\boxed{") and item.answer.endswith("}$")
        assert len(item.images) == 1
        with Image.open(item.images[0]) as im:
            assert im.size == (32, 32)
        assert [c["type"] for c in item.message[0]["content"]] == ["image", "text"]
        if item.answer[8] in "ABCD" and item.answer[9] == "}":
            letters += 1
            assert "\nChoices:\nA: " in item.question
    assert letters > 0


def test_sokoban_levels_are_distinct_and_short(generated: tuple[Path, dict]) -> None:
    items = [*load_sokoban(generated[0], "train"), *load_sokoban(generated[0], "test")]
    assert len({i.grid for i in items}) == len(items)
    for item in items:
        assert 1 <= len(item.solution) <= SMALL.sokoban.max_solution_length
        assert item.height in SMALL.sokoban.sizes and item.num_boxes in SMALL.sokoban.num_boxes
        assert item.image_path.is_file()
        assert len(item.level().boxes) == item.num_boxes
