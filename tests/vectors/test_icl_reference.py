"""The k-shot ICL reference of the live/mimic test split: independent demo draws, averaged (hand-computed); the
icl-reference stage's output written and read back; the checks live and mimic make on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.vectors import evaluation
from lmmops.vectors.evaluation import IclScores, evaluate_test, icl_demos, score_icl_reference
from lmmops.vectors.icl_reference import (
    IclReferenceMismatch,
    decoding_params,
    read_icl_reference,
    write_icl_reference,
)
from lmmops.vectors.reporting import stage_metrics, vector_stage_markdown


def item(i: int, answer: str, split: str) -> VQAItem:
    answers = tuple(VQAAnswer(answer, "yes", j) for j in range(10))
    return VQAItem(i, i, "What color is the shape?", "icl/colour/en", "other", answer, answers,
                   Path(f"{i}.png"), split)


def test_draw_zero_is_the_single_draw_and_other_draws_differ() -> None:
    pool = [item(i, "red", "train") for i in range(40)]
    query = pool[3]
    single = icl_demos(query, pool, 8, seed=0, index=5)
    assert icl_demos(query, pool, 8, seed=0, index=5, draw=0) == single
    draws = [icl_demos(query, pool, 8, seed=0, index=5, draw=d) for d in range(4)]
    assert len({tuple(x.question_id for x in d) for d in draws}) == 4
    for d in draws:
        assert len({x.question_id for x in d}) == 8 and query.question_id not in {x.question_id for x in d}


class FakeRunner:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.model = None


@pytest.fixture
def fake_icl(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """ICL answers right exactly when the first demo has an even question id (the score of each query under each
    draw follows from icl_demos); each generation takes 2 s + the number of calls so far. Returns the calls'
    prompt counts."""
    calls: list[int] = []

    def fake_generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: Any,
                      instruction: Any) -> tuple[list[str], float]:
        calls.append(len(prompts))
        return ["red" if demos[0].question_id % 2 == 0 else "blue" for demos, _ in prompts], 2.0 + len(calls)

    monkeypatch.setattr(evaluation, "ICLRunner", FakeRunner)
    monkeypatch.setattr(evaluation, "timed_generate", fake_generate)
    return calls


def test_each_query_is_scored_by_its_mean_over_the_draws(fake_icl: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    train = [item(i, "red", "train") for i in range(10)]
    test = [item(100 + i, "red", "test") for i in range(3)]
    pools = {"p": {"train": train, "val": [], "test": test}}
    kw = {"shots": 4, "seed": 7, "batch_size": 8, "max_new_tokens": 4, "instruction": None}

    expected = []
    for i, q in enumerate(test):
        hits = [icl_demos(q, train, 4, seed=7, index=i, draw=d)[0].question_id % 2 == 0 for d in range(3)]
        expected.append(sum(hits) / 3)
    assert len(set(expected)) > 1 or 0 < expected[0] < 1  # the draws do disagree somewhere

    scores = score_icl_reference(None, None, pools, draws=3, **kw)
    assert fake_icl == [3, 3, 3] and scores["p"].seconds == 3.0  # best of the three draws' seconds
    assert scores["p"].item_acc == pytest.approx(expected)

    one = score_icl_reference(None, None, pools, draws=1, **kw)
    first_draw = [float(icl_demos(q, train, 4, seed=7, index=i)[0].question_id % 2 == 0) for i, q in enumerate(test)]
    assert one["p"].item_acc == pytest.approx(first_draw)
    with pytest.raises(ValueError, match="icl_draws must be >= 1"):
        score_icl_reference(None, None, pools, draws=0, **kw)

    # evaluate_test takes the reference as given: icl_acc is its mean, the gap is paired on the same items
    def fake_vectors(model: Any, processor: Any, vs: Any, items: Any, *, samples_out: Any = None,
                     **k: Any) -> dict[str, float]:
        if samples_out is not None:  # the vectors get the first query right only
            samples_out += [{"accuracy": 1.0 if n == 0 else 0.0} for n in range(len(items))]
        return {"accuracy": 1 / 3}

    monkeypatch.setattr(evaluation, "evaluate_vectors", fake_vectors)
    monkeypatch.setattr(evaluation, "generation_seconds", lambda *a, **k: {"zero-shot": 1.0, "vectors": 1.0})
    calls = len(fake_icl)
    result = evaluate_test(None, None, {"p": object()}, pools, scores, batch_size=8, max_new_tokens=4,
                           instruction=None, repeats=1)
    assert len(fake_icl) == calls  # no k-shot prompt is generated
    assert result.icl_acc["p"] == pytest.approx(sum(expected) / 3) and result.seconds["p"]["icl"] == 3.0
    gap, _ = result.gap["p"]
    assert gap == pytest.approx(sum(e - v for e, v in zip(expected, [1.0, 0.0, 0.0], strict=True)) / 3)


def test_the_table_names_the_number_of_draws() -> None:
    metrics = {"test_acc/p": 0.5, "zero_shot_acc/p": 0.1, "icl_acc/p": 0.6, "val_acc/p": 0.5,
               "test_acc/mean": 0.5, "zero_shot_acc/mean": 0.1, "icl_acc/mean": 0.6, "val_acc/mean": 0.5,
               "trainable_params": 516.0, "icl_draws": 4.0}
    assert "16-shot ICL (mean of 4 demo draws)" in vector_stage_markdown("live", metrics, {}, 16)
    assert "mean of" not in vector_stage_markdown("live", {**metrics, "icl_draws": 1.0}, {}, 16)


DECODING = decoding_params(eval_batch_size=8, max_new_tokens=4, num_beams=1, answer_cut=(), instruction=None)


def _pools() -> dict[str, dict[str, list[VQAItem]]]:
    train = [item(i, "red", "train") for i in range(10)]
    vqa_train = [dataclasses.replace(item(20 + i, "red", "train"), question_type="what color") for i in range(6)]
    return {"icl/colour/en": {"train": train, "val": [], "test": [item(100 + i, "red", "test") for i in range(3)]},
            "vqa": {"train": vqa_train, "val": [], "test": [item(200 + i, "red", "test") for i in range(2)]}}


def _write(directory: Path, **kw: Any) -> Path:
    scores = {"icl/colour/en": IclScores([1.0, 1 / 3, 0.0], 2.5), "vqa": IclScores([0.1 + 0.2, 1.0], 1.25)}
    args: dict[str, Any] = {"model_fingerprint": "f" * 64, "shots": 4, "draws": 3, "seed": 7, "decoding": DECODING,
                            "extra": {"model": "models/base"}, **kw}
    return write_icl_reference(directory, scores, _pools(), **args)


def test_the_reference_is_written_whole_and_read_back(tmp_path: Path) -> None:
    out = _write(tmp_path / "ref")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # no temporary directory left
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shots"] == 4 and manifest["icl_draws"] == 3 and manifest["seed"] == 7
    assert manifest["model_fingerprint"] == "f" * 64 and manifest["decoding"] == DECODING
    assert manifest["pools"]["icl/colour/en"]["test_items"] == [100, 101, 102]
    assert manifest["pools"]["vqa"]["demo_items"] == list(range(20, 26))
    assert (out / manifest["pools"]["icl/colour/en"]["path"]).is_file()

    ref = read_icl_reference(out)
    assert list(ref.scores) == ["icl/colour/en", "vqa"] and ref.draws == 3
    assert ref.scores["icl/colour/en"] == IclScores([1.0, 1 / 3, 0.0], 2.5)
    assert ref.scores["vqa"].item_acc == [0.1 + 0.2, 1.0]  # floats come back bit for bit
    ref.check(_pools(), shots=4, decoding=DECODING, stage="live")
    ref.check({"vqa": _pools()["vqa"]}, shots=4, decoding=DECODING, stage="live")  # a subset of the pools
    ref.check_model("f" * 64, stage="live")

    _write(out, seed=8)  # a rerun replaces the directory whole
    assert read_icl_reference(out).manifest["seed"] == 8
    with pytest.raises(ValueError, match="3 scores for 2 test items"):
        write_icl_reference(tmp_path / "bad", {"vqa": IclScores([0.0, 1.0, 1.0], 1.0)}, _pools(),
                            model_fingerprint="f", shots=4, draws=1, seed=0, decoding=DECODING)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))


def test_a_mismatch_names_the_file_and_the_field_and_says_what_to_run(tmp_path: Path) -> None:
    out = _write(tmp_path / "ref")
    ref = read_icl_reference(out)
    manifest = str(out / "manifest.json")

    def fails(field: str, call: Any) -> None:
        with pytest.raises(IclReferenceMismatch) as exc:
            call()
        message = str(exc.value)
        assert message.startswith(manifest) and field in message and "dvc repro icl-reference" in message, message

    fails("shots", lambda: ref.check(_pools(), shots=16, decoding=DECODING, stage="live"))
    fails("decoding.num_beams", lambda: ref.check(_pools(), shots=4, decoding={**DECODING, "num_beams": 3},
                                                  stage="mimic"))
    fails("decoding.eval_batch_size", lambda: ref.check(_pools(), shots=4, decoding={**DECODING, "eval_batch_size": 64},
                                                        stage="live"))
    fails("decoding.answer_cut", lambda: ref.check(_pools(), shots=4, decoding={**DECODING, "answer_cut": [", "]},
                                                   stage="live"))
    fails("no pool 'icl/shape/en'", lambda: ref.check({**_pools(), "icl/shape/en": _pools()["vqa"]}, shots=4,
                                                      decoding=DECODING, stage="live"))
    other_test = _pools()
    other_test["vqa"]["test"] = other_test["vqa"]["test"][::-1]
    fails("pools['vqa'].test_items", lambda: ref.check(other_test, shots=4, decoding=DECODING, stage="live"))
    other_demos = _pools()
    other_demos["icl/colour/en"]["train"] = other_demos["icl/colour/en"]["train"][:-1]
    fails("pools['icl/colour/en'].demo_items", lambda: ref.check(other_demos, shots=4, decoding=DECODING,
                                                                  stage="live"))
    fails("model_fingerprint", lambda: ref.check_model("0" * 64, stage="live"))

    with pytest.raises(FileNotFoundError, match=r"no ICL reference at .*dvc repro icl-reference"):
        read_icl_reference(tmp_path / "missing")
    (out / "manifest.json").write_text(json.dumps({**json.loads((out / "manifest.json").read_text()), "format": 0}))
    fails("format", lambda: read_icl_reference(out))


def test_near_duplicates_are_left_out_of_the_nodup_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The *_nodup metrics are the same per-item scores without the near-duplicate test items (hand-computed)."""
    train = [item(i, "red", "train") for i in range(10)]
    test = [item(100 + i, "red", "test") for i in range(4)]
    test[0] = dataclasses.replace(test[0], near_duplicate_of=train[0].question_id)  # a near-copy of a train item
    vector_scores, zero_scores = [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]

    def fake_vectors(model: Any, processor: Any, vs: Any, items: Any, *, samples_out: Any = None,
                     **kw: Any) -> dict[str, float]:
        by_id = dict(zip((q.question_id for q in test), zero_scores if vs is None else vector_scores, strict=True))
        scores = [by_id[q.question_id] for q in items]
        samples_out += [{"question_id": q.question_id, "accuracy": a} for q, a in zip(items, scores, strict=True)]
        return {"accuracy": sum(scores) / len(scores)}

    monkeypatch.setattr(evaluation, "evaluate_vectors", fake_vectors)
    monkeypatch.setattr(evaluation, "generation_seconds", lambda *a, **k: {"zero-shot": 1.0, "vectors": 1.0})
    pools = {"p": {"train": train, "val": [], "test": test}, "q": {"train": train, "val": [], "test": test[1:]}}
    icl = {"p": IclScores([1.0, 1.0, 1.0, 0.0], 1.0), "q": IclScores([1.0, 1.0, 0.0], 1.0)}  # right but the last
    result = evaluate_test(None, None, {"p": object(), "q": object()}, pools, icl, batch_size=8, max_new_tokens=4,
                           instruction=None, repeats=1)
    assert result.near_duplicate["p"] == [True, False, False, False]
    assert result.item_acc["p"] == {"vectors": vector_scores, "zero-shot": zero_scores, "icl": [1.0, 1.0, 1.0, 0.0]}
    training = {p: SimpleNamespace(val_acc=0.5, step=1) for p in pools}
    m = stage_metrics(training, result, trainable_params=8, shots=4)

    # pool p without item 0: vectors 0, 1, 0 -> 1/3; zero-shot 0, 0, 0 -> 0; ICL 1, 1, 0 -> 2/3
    assert m["test_acc/p"] == 0.5 and m["test_acc_nodup/p"] == pytest.approx(1 / 3)
    assert m["zero_shot_acc/p"] == 0.25 and m["zero_shot_acc_nodup/p"] == 0.0
    assert m["icl_acc/p"] == 0.75 and m["icl_acc_nodup/p"] == pytest.approx(2 / 3)
    assert m["test_items/p"] == 4 and m["test_items_nodup/p"] == 3
    # gap ICL - vectors on the 3 items: 1, 0, 0 -> 1/3, sd sqrt(1/3), SE sqrt(1/9) = 1/3
    assert m["gap_to_icl_nodup/p"] == pytest.approx(1 / 3) and m["gap_to_icl_se_nodup/p"] == pytest.approx(1 / 3)
    # pool q has no near-duplicate (real data): both numbers are the same
    for family in ("test_acc", "zero_shot_acc", "icl_acc", "gap_to_icl", "gap_to_icl_se", "test_items"):
        assert m[f"{family}_nodup/q"] == pytest.approx(m[f"{family}/q"]), family
    # means over pools, as the originals
    for family in ("test_acc", "zero_shot_acc", "icl_acc"):
        assert m[f"{family}_nodup/mean"] == pytest.approx((m[f"{family}_nodup/p"] + m[f"{family}_nodup/q"]) / 2)
        assert m[f"{family}/mean"] == pytest.approx((m[f"{family}/p"] + m[f"{family}/q"]) / 2)
    assert m["gap_to_icl_nodup/mean"] == pytest.approx(m["icl_acc_nodup/mean"] - m["test_acc_nodup/mean"])
    assert m["gain_over_zero_shot_nodup/mean"] == pytest.approx(m["test_acc_nodup/mean"]
                                                                - m["zero_shot_acc_nodup/mean"])
    assert m["gap_to_icl_se_nodup/mean"] == pytest.approx(
        (m["gap_to_icl_se_nodup/p"] ** 2 + m["gap_to_icl_se_nodup/q"] ** 2) ** 0.5 / 2)
    assert m["val_acc/mean"] == 0.5 and m["selected_step/p"] == 1.0 and m["pools"] == 2.0
    table = vector_stage_markdown("live", m, {"icl": 2.0, "vectors": 1.0}, 4)
    assert "Without near-duplicates" in table and "| p | 0.0 | 66.7 | 33.3 | +33.3 ± 33.3 | 3 (of 4) |" in table
