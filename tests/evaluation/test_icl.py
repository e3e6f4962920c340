"""lmmops.evaluation.icl: the twin-task answer by hand, and the ICL accuracy without near-duplicate queries.

Run: `.venv/bin/python -m pytest tests/evaluation/test_icl.py -q`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmmops.data.loaders import load_vqa
from lmmops.data.schemas import VQAItem
from lmmops.evaluation.icl import evaluate_icl, telling_twin_answer
from lmmops.models.bootstrap import train

from testutil import tiny_config, tiny_project


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluation")
    return tiny_project(root, vqa={"train": 120, "val": 10, "test": 40}, model=False) / "data"


def test_telling_twin_answer_hand_computed() -> None:
    def item(task: str, answer: str) -> VQAItem:
        return VQAItem(0, 0, "What is this?", task, "other", answer, (), Path("x.png"), "test")

    # colour/alias says crimson for red, lime for green, and blue, yellow as en does.
    red = item("icl/colour/alias", "crimson")  # a red image
    assert telling_twin_answer(red, [item("icl/colour/alias", "lime")]) == "red"  # a green demo tells
    assert telling_twin_answer(red, [item("icl/colour/alias", "blue")]) is None  # fixed point: no
    assert telling_twin_answer(item("icl/colour/alias", "yellow"), [item("icl/colour/alias", "crimson")]) is None
    assert telling_twin_answer(item("icl/shape/en", "square"), [item("icl/shape/en", "circle")]) == "box"
    # position/alias: northeast for top right, southwest for bottom left
    assert telling_twin_answer(item("icl/position/en", "top right"),
                               [item("icl/position/en", "top left"), item("icl/position/en", "bottom left")]) \
        == "northeast"
    assert telling_twin_answer(item("icl/colour/code", "alpha"), [item("icl/colour/code", "bravo")]) is None
    assert telling_twin_answer(red, []) is None


def test_icl_accuracy_without_near_duplicates_leaves_their_scores_out(data_dir: Path) -> None:
    """icl_acc_nodup_<k>shot: the same per-query scores without the near-duplicate queries. The scores do not
    depend on the flags, so flagging every query of some tasks must leave exactly the other tasks' scores. The
    model is an oracle that gets a prompt right when its token ids sum to an even number (about half of them,
    whatever the batch), so the accuracies are not all 0 as a barely trained model's are."""

    class ParityOracle(torch.nn.Module):
        def __init__(self, base: torch.nn.Module):
            super().__init__()
            self.base = base

        def get_base_model(self) -> torch.nn.Module:  # adapter_for reads the LLaVA behind it
            return self.base

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: object) -> SimpleNamespace:
            vocab = self.base.config.text_config.vocab_size
            right = (input_ids * attention_mask).sum(1) % 2 == 0
            target = torch.roll(input_ids, -1, dims=1)  # the next token: teacher forced, all right ...
            target = torch.where(right[:, None], target, (target + 1) % vocab)  # ... or all wrong
            return SimpleNamespace(logits=F.one_hot(target, vocab).float())

    result = train(tiny_config("bootstrap", steps=1, long_icl_rows=0), data_dir, None, progress=False)
    model = ParityOracle(result.model)
    items = load_vqa(data_dir, "test")
    queries = [it for it in items if it.is_icl]
    kw = {"shots": (0, 2), "repeats": 1, "demo_pool": load_vqa(data_dir, "train")}
    natural = evaluate_icl(model, result.processor, items, **kw)
    assert 0 < natural["icl_acc_2shot"] < 1
    assert natural["icl_queries_nodup"] == sum(q.near_duplicate_of is None for q in queries)

    clean = [dataclasses.replace(it, near_duplicate_of=None) for it in items]
    plain = evaluate_icl(model, result.processor, clean, **kw)
    assert plain["icl_queries_nodup"] == plain["icl_queries"]
    for k in (0, 2):  # no near-duplicates (real data): both numbers are the same
        assert plain[f"icl_acc_nodup_{k}shot"] == plain[f"icl_acc_{k}shot"] == natural[f"icl_acc_{k}shot"]

    flagged = {"icl/colour/en", "icl/shape/code"}
    marked = [dataclasses.replace(it, near_duplicate_of=0) if it.question_type in flagged else it for it in clean]
    out = evaluate_icl(model, result.processor, marked, **kw)
    count = {t: sum(q.question_type == t for q in queries) for t in {q.question_type for q in queries}}
    others = [t for t in count if t not in flagged]
    assert all(count.get(t) for t in flagged) and others
    for k in (0, 2):
        assert out[f"icl_acc_{k}shot"] == plain[f"icl_acc_{k}shot"]
        expected = sum(plain[f"icl_acc_{k}shot/{t.removeprefix('icl/')}"] * count[t] for t in others) / sum(
            count[t] for t in others)
        assert out[f"icl_acc_nodup_{k}shot"] == pytest.approx(expected)
        for t in count:
            key = f"icl_acc_nodup_{k}shot/{t.removeprefix('icl/')}"
            assert (key in out) == (t not in flagged)
            if t not in flagged:
                assert out[key] == plain[key]
