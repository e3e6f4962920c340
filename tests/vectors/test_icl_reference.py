"""The k-shot ICL reference of the live/mimic test split: independent demo draws, averaged (hand-computed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lmmops.icl.inference as inference
from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.vectors import stage_lib
from lmmops.vectors.stage_lib import evaluate_test, icl_demos


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


def test_each_query_is_scored_by_its_mean_over_the_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    train = [item(i, "red", "train") for i in range(10)]
    test = [item(100 + i, "red", "test") for i in range(3)]

    # ICL answers right exactly when the first demo has an even question id: the score of each query under
    # each draw follows from icl_demos, so the expected means are computed here by hand from the same draws.
    def fake_generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: Any,
                      instruction: Any) -> tuple[list[str], float]:
        return ["red" if demos[0].question_id % 2 == 0 else "blue" for demos, _ in prompts], 1.0

    def fake_vectors(model: Any, processor: Any, vs: Any, items: Any, *, samples_out: Any = None,
                     **kw: Any) -> dict[str, float]:
        if samples_out is not None:  # the vectors get the first query right only
            samples_out += [{"accuracy": 1.0 if k == 0 else 0.0} for k in range(len(items))]
            return {"accuracy": 1 / 3}
        return {"accuracy": 0.0}

    monkeypatch.setattr(inference, "ICLRunner", FakeRunner)
    monkeypatch.setattr(stage_lib, "_generate", fake_generate)
    monkeypatch.setattr(stage_lib, "evaluate_vectors", fake_vectors)
    monkeypatch.setattr(stage_lib, "generation_seconds",
                        lambda *a, **k: {"zero-shot": 1.0, "vectors": 1.0})
    pools = {"p": {"train": train, "val": [], "test": test}}

    expected = []
    for i, q in enumerate(test):
        hits = [icl_demos(q, train, 4, seed=7, index=i, draw=d)[0].question_id % 2 == 0 for d in range(3)]
        expected.append(sum(hits) / 3)
    assert len(set(expected)) > 1 or 0 < expected[0] < 1  # the draws do disagree somewhere

    result = evaluate_test(None, None, {"p": object()}, pools, shots=4, seed=7, batch_size=8, max_new_tokens=4,
                           instruction=None, repeats=1, icl_draws=3)
    assert result.icl_acc["p"] == pytest.approx(sum(expected) / 3)
    gap, _ = result.gap["p"]
    assert gap == pytest.approx(sum(e - v for e, v in zip(expected, [1.0, 0.0, 0.0], strict=True)) / 3)

    one = evaluate_test(None, None, {"p": object()}, pools, shots=4, seed=7, batch_size=8, max_new_tokens=4,
                        instruction=None, repeats=1, icl_draws=1)
    first_draw = [float(icl_demos(q, train, 4, seed=7, index=i)[0].question_id % 2 == 0) for i, q in enumerate(test)]
    assert one.icl_acc["p"] == pytest.approx(sum(first_draw) / 3)

    with pytest.raises(ValueError, match="icl_draws must be >= 1"):
        evaluate_test(None, None, {"p": object()}, pools, shots=4, seed=7, batch_size=8, max_new_tokens=4,
                      instruction=None, repeats=1, icl_draws=0)


def test_the_table_names_the_number_of_draws() -> None:
    metrics = {"test_acc/p": 0.5, "zero_shot_acc/p": 0.1, "icl_acc/p": 0.6, "val_acc/p": 0.5,
               "test_acc/mean": 0.5, "zero_shot_acc/mean": 0.1, "icl_acc/mean": 0.6, "val_acc/mean": 0.5,
               "trainable_params": 516.0, "icl_draws": 4.0}
    assert "16-shot ICL (mean of 4 demo draws)" in stage_lib.results_markdown("live", metrics, {}, 16)
    assert "mean of" not in stage_lib.results_markdown("live", {**metrics, "icl_draws": 1.0}, {}, 16)


def test_the_reference_is_kept_and_read_back_by_the_next_stage(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    train = [item(i, "red", "train") for i in range(10)]
    test = [item(100 + i, "red", "test") for i in range(3)]
    calls: list[int] = []

    def fake_generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: Any,
                      instruction: Any) -> tuple[list[str], float]:
        calls.append(len(prompts))
        return ["red" if demos[0].question_id % 2 == 0 else "blue" for demos, _ in prompts], 2.0 + len(calls)

    def fake_key(model: Any, processor: Any, test: Any, train: Any, *, shots: int, seed: int, draws: int,
                 **kw: Any) -> str:
        return f"{shots:08d}{seed:08d}{draws:08d}ffff"

    monkeypatch.setattr(inference, "ICLRunner", FakeRunner)
    monkeypatch.setattr(stage_lib, "_generate", fake_generate)
    monkeypatch.setattr(stage_lib, "evaluate_vectors", lambda *a, samples_out=None, **k: (
        samples_out.extend({"accuracy": 0.0} for _ in test) if samples_out is not None else None) or {"accuracy": 0})
    monkeypatch.setattr(stage_lib, "generation_seconds", lambda *a, **k: {"zero-shot": 1.0, "vectors": 1.0})
    monkeypatch.setattr(stage_lib, "icl_reference_key", fake_key)
    pools = {"p": {"train": train, "val": [], "test": test}}
    kw = {"shots": 4, "batch_size": 8, "max_new_tokens": 4, "instruction": None, "repeats": 1, "icl_draws": 3,
          "icl_cache_dir": tmp_path / "ref"}

    first = evaluate_test(None, None, {"p": object()}, pools, seed=7, **kw)
    assert calls == [3, 3, 3] and first.seconds["p"]["icl"] == 3.0  # best of the three draws' seconds
    kept = list((tmp_path / "ref").iterdir())
    assert [f.name for f in kept] == [f"{fake_key(None, None, test, train, shots=4, seed=7, draws=3)[:24]}.json"]

    second = evaluate_test(None, None, {"p": object()}, pools, seed=7, **kw)  # the other stage: read, not scored
    assert calls == [3, 3, 3]
    assert second.icl_acc == first.icl_acc and second.seconds["p"]["icl"] == 3.0 and second.gap == first.gap

    evaluate_test(None, None, {"p": object()}, pools, seed=8, **kw)  # other demo draws: another key, scored
    assert calls == [3] * 6 and len(list((tmp_path / "ref").iterdir())) == 2

    kept[0].write_text("{not json")  # a damaged file is scored again and rewritten, not trusted
    again = evaluate_test(None, None, {"p": object()}, pools, seed=7, **kw)
    assert calls == [3] * 9 and again.icl_acc == first.icl_acc
    assert stage_lib.read_icl_reference(kept[0])[0] is not None


def test_the_reference_key_follows_model_items_images_and_draws(tmp_path: Path) -> None:
    from vectorutil import tiny

    from lmmops.vectors.stage_lib import icl_reference_key

    model, processor = tiny("llava")
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(b"png-%d" % i)

    def pool(prefix: Path) -> list[VQAItem]:
        return [VQAItem(i, i, "What color?", "icl/colour/en", "other", "red",
                        tuple(VQAAnswer("red", "yes", j) for j in range(10)), prefix / f"{i}.png", "test")
                for i in range(4)]

    test, train = pool(tmp_path)[:2], pool(tmp_path)[2:]
    kw = {"shots": 4, "seed": 0, "draws": 2, "batch_size": 8, "max_new_tokens": 4, "instruction": None}
    key = icl_reference_key(model, processor, test, train, **kw)
    assert icl_reference_key(model, processor, test, train, **kw) == key
    assert icl_reference_key(model, processor, test, train, **{**kw, "seed": 1}) != key
    assert icl_reference_key(model, processor, test, train, **{**kw, "draws": 3}) != key
    assert icl_reference_key(model, processor, test, train[:1], **kw) != key
    (tmp_path / "1.png").write_bytes(b"another image")  # same names, other pixels
    assert icl_reference_key(model, processor, test, train, **kw) != key
    other_model, _ = tiny("llava", seed=1)
    assert icl_reference_key(other_model, processor, test, train, **kw) != icl_reference_key(
        model, processor, test, train, **kw)


def test_near_duplicates_are_left_out_of_the_nodup_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The *_nodup metrics are the same per-item scores without the near-duplicate test items (hand-computed)."""
    import dataclasses
    from types import SimpleNamespace

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

    # ICL: right on every query but the last
    def fake_generate(runner: Any, prompts: list[tuple[list[VQAItem], VQAItem]], vectors: Any,
                      instruction: Any) -> tuple[list[str], float]:
        return ["red" if q.question_id != 103 else "blue" for _, q in prompts], 1.0

    monkeypatch.setattr(inference, "ICLRunner", FakeRunner)
    monkeypatch.setattr(stage_lib, "_generate", fake_generate)
    monkeypatch.setattr(stage_lib, "evaluate_vectors", fake_vectors)
    monkeypatch.setattr(stage_lib, "generation_seconds", lambda *a, **k: {"zero-shot": 1.0, "vectors": 1.0})
    pools = {"p": {"train": train, "val": [], "test": test}, "q": {"train": train, "val": [], "test": test[1:]}}
    result = evaluate_test(None, None, {"p": object(), "q": object()}, pools, shots=4, seed=7, batch_size=8,
                           max_new_tokens=4, instruction=None, repeats=1)
    assert result.near_duplicate["p"] == [True, False, False, False]
    assert result.item_acc["p"] == {"vectors": vector_scores, "zero-shot": zero_scores, "icl": [1.0, 1.0, 1.0, 0.0]}
    training = {p: SimpleNamespace(val_acc=0.5, step=1) for p in pools}
    m = stage_lib.stage_metrics(training, result, trainable_params=8, shots=4)

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
    assert m["gap_to_icl_nodup/mean"] == pytest.approx(m["icl_acc_nodup/mean"] - m["test_acc_nodup/mean"])
    assert m["gain_over_zero_shot_nodup/mean"] == pytest.approx(m["test_acc_nodup/mean"]
                                                                - m["zero_shot_acc_nodup/mean"])
    assert m["gap_to_icl_se_nodup/mean"] == pytest.approx(
        (m["gap_to_icl_se_nodup/p"] ** 2 + m["gap_to_icl_se_nodup/q"] ** 2) ** 0.5 / 2)
    table = stage_lib.results_markdown("live", m, {"icl": 2.0, "vectors": 1.0}, 4)
    assert "Without near-duplicates" in table and "| p | 0.0 | 66.7 | 33.3 | +33.3 ± 33.3 | 3 (of 4) |" in table
