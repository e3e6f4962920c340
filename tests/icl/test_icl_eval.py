"""The demo feature cache, batched ICL inference, the experiment plan and the `index` / `icl-eval` stages,
on a test-size LLaVA built by the bootstrap code (random weights: the numbers are not the point here,
the plumbing is; the default model's numbers come from `make run`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from lmmops.config import (
    ICLEvalConfig,
    IndexConfig,
)
from lmmops.data.loaders import load_vqa
from lmmops.data.schemas import VQAAnswer
from lmmops.icl.cache import DemoFeatureCache, image_key
from lmmops.icl.embedders import ModelImageEmbedder
from lmmops.icl.experiment import RunSpec, check_plan, plan_runs, run_plan, score
from lmmops.icl.index import StaleIndexError
from lmmops.icl.inference import (
    LIVE_ANSWER_CUT,
    Decoding,
    ICLRunner,
    compile_answer_cut,
    current_decoding,
    cut_answer,
    decoding,
)
from lmmops.icl.retrieval import Retriever

from testutil import tiny_config

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def workspace(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny project (conftest `workspace`: test-size data and LLaVA, 2 training steps, with
    its word tokenizer) of this module's own: test_stale_index_fails_before_generation edits its data."""
    root = tmp_path_factory.mktemp("icl")
    shutil.copytree(workspace, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def loaded(workspace: Path) -> tuple:
    from lmmops.models import load_model

    model, processor = load_model(workspace / "model")
    return model, processor, load_vqa(workspace / "data", "train"), load_vqa(workspace / "data", "test")


class VisionCounter:
    """Counts the images that go through the vision tower (a forward hook on the module)."""

    def __init__(self, module: torch.nn.Module):
        self.images = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs_or_out: object) -> None:
        self.images += int(args[0].shape[0])

    def close(self) -> None:
        self.handle.remove()


def test_cache_round_trip_and_stale_checks(loaded: tuple, tmp_path: Path) -> None:
    model, processor, support, _ = loaded
    embedder = ModelImageEmbedder(model, processor, batch_size=8)
    cache = DemoFeatureCache.build(embedder, [it.image_path for it in support], data_version="v1")
    assert len(cache) == len({it.image_path.name for it in support})
    direct = embedder.adapter.image_features([embedder_image(support[0].image_path)])[0]
    torch.testing.assert_close(cache.get(image_key(support[0].image_path)), direct, rtol=1e-5, atol=1e-5)
    cache.save(tmp_path / "c")
    again = DemoFeatureCache.load(tmp_path / "c", model_fingerprint=embedder.name, data_version="v1")
    assert again.features.keys() == cache.features.keys()
    with pytest.raises(StaleIndexError, match="data version differs"):
        DemoFeatureCache.load(tmp_path / "c", model_fingerprint=embedder.name, data_version="v2")
    with pytest.raises(StaleIndexError, match="model differs"):
        DemoFeatureCache.load(tmp_path / "c", model_fingerprint="model:llava:other", data_version="v1")
    (tmp_path / "c" / "features.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checksum"):
        DemoFeatureCache.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="lmmops index"):
        DemoFeatureCache.load(tmp_path / "missing")


def embedder_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def test_cached_inference_encodes_query_images_only_and_matches(loaded: tuple) -> None:
    model, processor, support, test = loaded
    embedder = ModelImageEmbedder(model, processor, batch_size=16)
    cache = DemoFeatureCache.build(embedder, [it.image_path for it in support], data_version="v")
    queries = test[:6]
    rows = Retriever(support).retrieve("RS", queries, 3, seed=0)
    prompts = [([support[i] for i in row], q) for row, q in zip(rows, queries, strict=True)]
    vision = embedder.adapter.vision_model

    counter = VisionCounter(vision)
    try:
        uncached = ICLRunner(model, processor, batch_size=4, progress=False).predict(prompts)
        images_uncached = counter.images
        counter.images = 0
        runner = ICLRunner(model, processor, cache=cache, batch_size=8, progress=False)  # one batch
        cached = runner.predict(prompts)
        images_cached = counter.images
    finally:
        counter.close()
    assert cached == uncached
    assert images_uncached == len(queries) * 4  # 3 demos + the query, every prompt
    assert images_cached == len({q.image_path for q in queries}) == runner.vision_images_encoded  # queries only


def test_prompts_without_cached_pixels_have_the_processor_ids(loaded: tuple) -> None:
    from lmmops.models import ICLItem, adapter_for

    model, processor, support, test = loaded
    adapter = adapter_for(model, processor)
    assert adapter.skips_unneeded_pixels  # the test-size model is a LLaVA
    items = [ICLItem(embedder_image(it.image_path), it.question, it.multiple_choice_answer) for it in support[:3]]
    queries = [ICLItem(embedder_image(it.image_path), it.question) for it in test[:2]]
    specs = [(items, queries[0]), (items[:1], queries[1])]
    need = [[False, True, False, True], [False, True]]
    for side in ("left", "right"):
        full = adapter.build_prompts(specs, padding_side=side)
        skipped = adapter.build_prompts(specs, padding_side=side, need_pixels=need)
        assert torch.equal(skipped.input_ids, full.input_ids)
        assert torch.equal(skipped.attention_mask, full.attention_mask)
        assert skipped.query_spans == full.query_spans and skipped.demo_spans == full.demo_spans
        # pixel rows of the flagged images only, in prompt order (full: demo0 demo1 demo2 q0 demo0 q1)
        torch.testing.assert_close(skipped.inputs["pixel_values"], full.inputs["pixel_values"][[1, 3, 5]])
    with pytest.raises(ValueError, match="one flag per image"):
        adapter.build_prompts(specs, need_pixels=[[True], [True, True]])


def test_llava_pixel_memo_gives_the_processor_output(loaded: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    from lmmops.models import ICLItem, adapter_for, adapters

    model, processor, support, test = loaded
    adapter = adapter_for(model, processor)
    items = [ICLItem(embedder_image(it.image_path), it.question, it.multiple_choice_answer) for it in support[:4]]
    queries = [ICLItem(embedder_image(it.image_path), it.question, it.multiple_choice_answer) for it in test[:2]]
    specs = [(items[:3], queries[0]), (items[1:], queries[1]), ([items[0], items[0]], queries[0]), ([], queries[1])]
    other = copy.deepcopy(processor)  # not the adapter's own processor: the processor call itself, no memo
    row_bytes = 3 * 32 * 32 * 4
    monkeypatch.setattr(adapters, "PIXEL_MEMO_BYTES", 5 * row_bytes)  # fewer rows than the prompts' 6 images
    for side in ("left", "right"):
        for with_answer in (False, True):
            expected = adapter.build_prompts(specs, padding_side=side, with_answer=with_answer, processor=other)
            for _ in range(2):  # the second time from the memo
                got = adapter.build_prompts(specs, padding_side=side, with_answer=with_answer)
                assert set(got.inputs) == set(expected.inputs)
                for key, value in expected.inputs.items():
                    assert torch.equal(got.inputs[key], value), key
                assert got.query_spans == expected.query_spans and got.demo_spans == expected.demo_spans
    memo = adapter.__dict__["_pixel_memo"]
    assert len(memo) == 6  # every image of the last call is kept, older ones went first
    adapter.build_prompts([([], queries[0])])
    assert len(memo) == 5 and id(queries[0].image) in memo


def test_query_ids_memo_is_bounded_and_exact(loaded: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmmops.models import ICLItem, adapter_for, adapters

    model, processor, support, test = loaded
    monkeypatch.setattr(adapters, "QUERY_IDS_MEMO", 2)
    adapter = adapter_for(model, processor)
    demos = [ICLItem(embedder_image(it.image_path), it.question, it.multiple_choice_answer) for it in support[:2]]
    queries = [ICLItem(embedder_image(it.image_path), f"{it.question} {i}") for i, it in enumerate(test[:4])]
    for q in queries + queries[:1]:  # the first query again, after it left the memo
        fresh = adapter_for(model, processor).build_prompts([(demos, q)])
        assert torch.equal(adapter.build_prompts([(demos, q)]).input_ids, fresh.input_ids)
        assert len(adapter._query_ids) <= 2


def test_cached_logits_equal_uncached(loaded: tuple) -> None:
    from lmmops.models import ICLItem, adapter_for

    model, processor, support, test = loaded
    adapter = adapter_for(model, processor)
    items = [ICLItem(embedder_image(it.image_path), it.question, it.multiple_choice_answer) for it in support[:3]]
    query = ICLItem(embedder_image(test[0].image_path), test[0].question)
    batch = adapter.build_prompts([(items, query), (items[:1], query)])
    with torch.no_grad():
        reference = model(**batch.model_inputs()).logits
        features = adapter.image_features([it.image for it in [*items, query, items[0], query]])
        embeds = adapter.embed_with_image_features(batch.input_ids, features)
        logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="image tokens"):
        adapter.embed_with_image_features(batch.input_ids, features[:-1])


def test_answer_cut_rules_hand_checked() -> None:
    assert cut_answer("red, blue", LIVE_ANSWER_CUT) == "red"
    assert cut_answer("top left Question: what", LIVE_ANSWER_CUT) == "top left"
    assert cut_answer("two Answer: three", LIVE_ANSWER_CUT) == "two"
    assert cut_answer("Short answer: red", LIVE_ANSWER_CUT) == ""
    assert cut_answer("yes, Question", LIVE_ANSWER_CUT) == "yes"  # the first match of any rule
    assert cut_answer("  two squares \n", LIVE_ANSWER_CUT) == "two squares"  # no match: unchanged, stripped
    assert cut_answer("red,blue", LIVE_ANSWER_CUT) == "red,blue"  # ", " needs the space
    assert cut_answer(" a, b ", ()) == "a, b"  # no rules: stripped only
    assert cut_answer("questions", LIVE_ANSWER_CUT) == "questions"  # case-sensitive, as the reference's re.split
    for bad, message in [(["("], r"answer_cut\[0\]: '\(' is not a valid regex"),
                         (["ok", "a|"], r"answer_cut\[1\]: 'a\|' matches the empty string"),
                         (", ", "expected a list of regexes")]:
        with pytest.raises(ValueError, match=message):
            compile_answer_cut(bad)
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1"):
        Decoding(num_beams=0)


def _direct_generate(model: Any, processor: Any, prompts: list, max_new_tokens: int, **extra: Any) -> list[str]:
    """HF `generate` called directly on the runner's prompt batch (left padded, one batch, the runner's stop and
    pad ids), decoded and post-processed as the adapter does: what the runner must return."""
    from lmmops.models import ICLItem

    runner = ICLRunner(model, processor, progress=False)
    specs = [([ICLItem(embedder_image(d.image_path), d.question, d.multiple_choice_answer) for d in demos],
              ICLItem(embedder_image(q.image_path), q.question)) for demos, q in prompts]
    batch = runner.adapter.build_prompts(specs, padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=runner.stop_ids, pad_token_id=runner.pad_id, **extra)
    texts = runner.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
    return [runner.adapter.postprocess_answer(t) for t in texts]


def test_beam_search_and_answer_cut_in_the_runner(loaded: tuple) -> None:
    from lmmops.models import build_tiny

    _, _, support, test = loaded
    model, processor = build_tiny("llava", seed=1)  # random weights: greedy and beam search answers differ
    rows = Retriever(support).retrieve("RS", test[:8], 2, seed=0)
    prompts = [([support[i] for i in row], q) for row, q in zip(rows, test[:8], strict=True)]  # 2 demos each

    def run(**kw: Any) -> list[str]:
        return ICLRunner(model, processor, batch_size=8, max_new_tokens=4, progress=False, **kw).predict(prompts)

    today = _direct_generate(model, processor, prompts, 4)  # today's kwargs: greedy, no num_beams, no cut
    assert run() == run(num_beams=1, answer_cut=()) == today
    beams = run(num_beams=3)
    assert beams == _direct_generate(model, processor, prompts, 4, num_beams=3)
    assert len(beams) == len(prompts) and all(isinstance(a, str) for a in beams)
    assert beams != today  # the option reaches generate
    cut = run(answer_cut=(r" ",))
    assert cut == [a.split(" ")[0].strip() for a in today] != today  # cut at the first space
    # A stage's scope reaches runners built without options (evaluate_vectors'); explicit options win.
    assert current_decoding() == Decoding()
    with decoding(3, LIVE_ANSWER_CUT):
        assert run() == [cut_answer(a, LIVE_ANSWER_CUT) for a in beams]
        assert run(num_beams=1, answer_cut=()) == today
    assert current_decoding() == Decoding() and run() == today


def test_score_hand_computed(loaded: tuple) -> None:
    _, _, support, _ = loaded
    q = support[0]
    ten = tuple(VQAAnswer(a, "yes", i + 1) for i, a in enumerate(["red"] * 2 + ["blue"] * 8))
    query = dataclasses.replace(q, answers=ten, multiple_choice_answer="blue", question_type="what color")
    demo_red = dataclasses.replace(q, multiple_choice_answer="red")
    # "red": 2 of 10 annotators -> official accuracy 0.6 (8 subsets with 1 other match -> 1/3, 2 with 2 -> 2/3...)
    # exactly: subsets leaving out a "red" have 1 red -> 1/3 (x2); leaving out a "blue" have 2 reds -> 2/3 (x8)
    metrics = score([query, query], ["red", "Blue."], [[demo_red], [demo_red]])
    assert metrics["accuracy"] == pytest.approx(((2 * (1 / 3) + 8 * (2 / 3)) / 10 + 1.0) / 2)
    assert metrics["copy_rate"] == 0.5  # "red" copies the demo; "blue" does not
    assert metrics["accuracy/what color"] == metrics["accuracy"]
    assert metrics["accuracy_nodup"] == metrics["accuracy"] and metrics["queries_nodup"] == 2  # no near-duplicate

    # the second query a near-copy of a train item: left out of accuracy_nodup (the "red" query's 0.6 stays)
    from lmmops.icl.experiment import RunResult, flat_metrics, results_table

    dup = dataclasses.replace(query, question_id=query.question_id + 1, near_duplicate_of=q.question_id)
    metrics = score([query, dup], ["red", "Blue."], [[demo_red], [demo_red]])
    assert metrics["accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    assert metrics["accuracy_nodup"] == pytest.approx(0.6) and metrics["queries_nodup"] == 1
    assert "accuracy_nodup" not in score([dup], ["blue"], [[demo_red]])  # nothing left to average
    spec = RunSpec("RS", 1)
    results = {spec: RunResult(spec, ["red", "Blue."], [[demo_red], [demo_red]], metrics)}
    assert flat_metrics(results)["acc_nodup/RS/1shot"] == metrics["accuracy_nodup"]
    assert "| RS 1-shot | 80.0 | 60.0 |" in results_table(results)


def test_plan_errors_come_before_any_generation(loaded: tuple) -> None:
    _, _, support, test = loaded
    retriever = Retriever(support)

    class NoGeneration:
        def predict(self, *a: object, **k: object) -> list[str]:
            raise AssertionError("generation started")

    for specs, message in [
        ([RunSpec("RS", 1), RunSpec("SX", 1)], "unknown retrieval strategy 'SX'"),
        ([RunSpec("RS", len(support) + 1)], "larger than the support set"),
        ([RunSpec("RS", 2, "shuffle")], "unknown manipulation 'shuffle'"),
        ([RunSpec("SQA-pseudo", 2)], "needs an RS run at 2 shots or a zero-shot run"),
        ([RunSpec("RS", 1), RunSpec("SI", 1)], "needs an image embedder"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_plan(specs, test, retriever, NoGeneration(), seed=0)
    specs = plan_runs(["zero-shot", "SQA-pseudo", "RS"], [1, 2], manipulations=["wrong_answer"], analysis=("RS", 2))
    assert [s.name for s in specs] == ["zero-shot", "RS 1-shot", "RS 2-shot", "RS 2-shot wrong_answer",
                                       "SQA-pseudo 1-shot", "SQA-pseudo 2-shot"]
    check_plan(specs, Retriever(support, text_embedder=object()), test)  # type: ignore[arg-type]


def _stage_configs(workspace: Path) -> tuple[IndexConfig, ICLEvalConfig]:
    paths = {"data_dir": str(workspace / "data"), "model": str(workspace / "model")}
    return tiny_config("index", **paths), tiny_config("icl-eval", **paths)


def test_index_and_icl_eval_stages(workspace: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmmops.stages import metrics_path, run_stage

    index_cfg, eval_cfg = _stage_configs(workspace)
    metrics = run_stage("index", index_cfg, root=project)
    assert metrics["support_items"] == 60 and metrics["cached_images"] > 0
    summary = json.loads((project / "models/index/index.json").read_text())
    assert set(summary["spaces"]) == {"image", "question", "qa"} and summary["demo_cache"].startswith("model:llava:")
    assert not (project / "models/.index.tmp").exists()

    metrics = run_stage("icl-eval", eval_cfg, root=project)
    for key in ("acc/zero-shot/0shot", "acc/RS/1shot", "copy/SQA/2shot", "acc/SQA-pseudo/2shot",
                "acc/RS/2shot/wrong_answer", "TR", "TL", "acc/mixed/2shot"):
        assert key in metrics, key
    assert metrics["TR"] == metrics["acc/RS/2shot/wrong_answer"]
    assert metrics["TL"] == pytest.approx(metrics["acc/RS/2shot"] - metrics["TR"])
    report = project / "reports/icl_eval"
    assert (report / "accuracy_vs_shots.png").stat().st_size > 0 and (report / "copy_rate.png").stat().st_size > 0
    results = json.loads((report / "results.json").read_text())
    assert len(results["runs"]) == 1 + 6 * 2 + 2 and results["queries"] == 8
    assert "SQA (oracle)" in (report / "results.md").read_text()
    # every run's accuracy also without the near-duplicate queries (near-copies of train items)
    queries = load_vqa(workspace / "data", "test")[:8]
    assert metrics["queries_nodup"] == sum(q.near_duplicate_of is None for q in queries)
    assert {k.replace("acc_nodup/", "acc/") for k in metrics if k.startswith("acc_nodup/")} == {
        k for k in metrics if k.startswith("acc/")}
    assert "Without near-duplicates" in (report / "results.md").read_text()
    assert json.loads(metrics_path(project, "icl-eval").read_text())["TR"] == metrics["TR"]

    # one nested MLflow run per (strategy, shots, manipulation)
    import mlflow

    children = mlflow.search_runs(filter_string="tags.strategy = 'RS'", search_all_experiments=True)
    assert sorted(children["tags.mlflow.runName"]) == ["RS 1-shot", "RS 2-shot", "RS 2-shot reverse",
                                                       "RS 2-shot wrong_answer"]
    assert children["tags.mlflow.parentRunId"].nunique() == 1


def test_stale_index_fails_before_generation(workspace: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmmops.stages import run_stage

    index_cfg, eval_cfg = _stage_configs(workspace)
    run_stage("index", index_cfg, root=project)

    def no_generation(*a: object, **k: object) -> list[str]:
        raise AssertionError("generation started")

    monkeypatch.setattr(ICLRunner, "predict", no_generation)
    # another data version: the data tree's manifest changes
    manifest = workspace / "data" / "manifest.json"
    original = manifest.read_text()
    try:
        manifest.write_text(original.replace("{", '{"edited": true, ', 1))
        with pytest.raises(StaleIndexError, match="data version differs"):
            run_stage("icl-eval", eval_cfg, root=project)
    finally:
        manifest.write_text(original)
    # another model (the configured one differs from the one the index was built with)
    from lmmops.models import load_model

    model, processor = load_model(workspace / "model")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(project / "other_model")
    processor.save_pretrained(project / "other_model")
    with pytest.raises(StaleIndexError, match="embedder differs"):
        run_stage("icl-eval", dataclasses.replace(eval_cfg, model=str(project / "other_model")), root=project)
    with pytest.raises(ValueError, match="unknown strategy 'XS'"):
        run_stage("icl-eval", dataclasses.replace(eval_cfg, strategies=("RS", "XS")), root=project)


def test_pooled_retrieval_keeps_demos_in_the_query_task(loaded: tuple) -> None:
    from lmmops.icl.embedders import PixelImageEmbedder
    from lmmops.icl.retrieval import PooledRetriever, task_pool

    _, _, support, test = loaded
    pooled = PooledRetriever(Retriever(support, image_embedder=PixelImageEmbedder()))
    assert sum(pooled.pools.values()) == len(support) and "vqa" in pooled.pools
    queries = [q for q in test if task_pool(q) in pooled.pools]
    for strategy in ("RS", "SI"):
        rows = pooled.retrieve(strategy, queries, 2, seed=0)
        for q, picks in zip(queries, rows, strict=True):
            assert len(picks) == 2 and all(task_pool(support[i]) == task_pool(q) for i in picks), strategy
            assert all(support[i].question_id != q.question_id for i in picks)
    # SI inside a pool is SI over that pool's slice of the full support vectors
    q = queries[0]
    own = [i for i, it in enumerate(support) if task_pool(it) == task_pool(q)]
    sub = Retriever([support[i] for i in own], image_embedder=PixelImageEmbedder())
    assert pooled.retrieve("SI", [q], 2)[0] == [own[j] for j in sub.retrieve("SI", [q], 2)[0]]
    smallest = min(pooled.pools, key=pooled.pools.get)
    with pytest.raises(ValueError, match=f"support pool '{smallest}'"):
        pooled.check("RS", pooled.pools[smallest] + 1)


def test_model_fingerprint_ignores_where_the_model_was_loaded_from(workspace: Path, tmp_path: Path) -> None:
    from lmmops.models import load_model

    shutil.copytree(workspace / "model", tmp_path / "elsewhere")
    (a, pa), (b, pb) = load_model(workspace / "model"), load_model(tmp_path / "elsewhere")
    assert ModelImageEmbedder(a, pa).name == ModelImageEmbedder(b, pb).name  # another clone: same index name
    with torch.no_grad():
        next(b.parameters()).mul_(2.0)
    assert ModelImageEmbedder(a, pa).name != ModelImageEmbedder(b, pb).name


def _result(spec: RunSpec, accuracy: float, copy: float, **groups: float) -> Any:
    from lmmops.icl.experiment import RunResult
    return RunResult(spec, [], [], {"accuracy": accuracy, "copy_rate": copy, **groups})


def test_findings_hand_computed_and_explained() -> None:
    """Hand-made results: gains 0.4 then 0.1 (shrink); SQ copies more than RS at both shot counts; TR/TL:
    TR 0.3 vs TL 0.7 - 0.3 = 0.4 overall, TR 0.6 > TL 0.1 on ordinary questions, TR 0.0 < TL 0.8 on the ICL
    tasks, so the overall failure is explained by the ICL task families."""
    from lmmops.icl.experiment import explain_findings, findings, tr_tl
    results = {
        RunSpec("zero-shot", 0): _result(RunSpec("zero-shot", 0), 0.2, 0.0),
        RunSpec("RS", 1): _result(RunSpec("RS", 1), 0.6, 0.1),
        RunSpec("RS", 2): _result(RunSpec("RS", 2), 0.7, 0.2, accuracy_ordinary=0.7, accuracy_icl_tasks=0.8),
        RunSpec("SQ", 1): _result(RunSpec("SQ", 1), 0.6, 0.5),
        RunSpec("SQ", 2): _result(RunSpec("SQ", 2), 0.7, 0.6),
        RunSpec("RS", 2, "wrong_answer"): _result(RunSpec("RS", 2, "wrong_answer"), 0.3, 0.0,
                                                  accuracy_ordinary=0.6, accuracy_icl_tasks=0.0),
    }
    split = tr_tl(results)
    assert split["TR"] == pytest.approx(0.3) and split["TL"] == pytest.approx(0.4)
    assert split["TR/ordinary"] == pytest.approx(0.6) and split["TL/ordinary"] == pytest.approx(0.1)
    found = findings(results)
    assert found["gains_shrink"] is True
    assert found["first_step_gain"] == pytest.approx(0.4) and found["last_step_gain"] == pytest.approx(0.1)
    assert found["copy_SQ_above_RS"] is True and found["copy_SQ_above_RS_at_shots"] == [1, 2]
    assert found["TR_above_TL"] is False and found["TR_above_TL_ordinary"] is True
    assert found["TR_above_TL_icl_tasks"] is False
    notes = explain_findings(found)
    assert len(notes) == 1 and notes[0].startswith("TR_above_TL: holds on the ordinary questions")
    # every finding holding: nothing to explain
    assert explain_findings({**found, "TR_above_TL": True}) == []
    # TR below TL on the ordinary questions too: the generic reason, not the ICL-task one
    assert "ICL task families" not in explain_findings({**found, "TR_above_TL_ordinary": False})[0]
