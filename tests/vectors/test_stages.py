"""The `live` and `mimic` stages end to end on a test-size LLaVA and test-size data: validation-only selection
(the test split scored once per pool, after all training), the bundle, the registered pyfunc answering a test
image from `models:/lmmops-mimic@champion`, champion/challenger by the val margin, resumption, bad input.

The tiny model is trained for 2 steps (random-ish weights): the numbers are not the point, the plumbing is; the
default model's numbers come from `make run` (reports/live/, reports/mimic/).

Run: `python -m pytest tests/vectors/test_stages.py -q`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lmmops.config import (
    LiveStageConfig,
    MimicStageConfig,
)
from lmmops.vectors import evaluation, pool_training
from lmmops.vectors.pools import SPLITS, VQA_POOL, select_pools, task_pools

from testutil import TINY, merged, tiny_config, tiny_distill

POOLS = ("icl/colour/en", "vqa")  # = the test-size stage configs' tasks (testutil.TINY)


def _cfg(cls: type, workspace: Path, **changes: Any) -> Any:
    """The test-size config of the stage of `cls` on the shared tiny project (conftest `workspace`)."""
    return tiny_config(cls.method, data_dir=str(workspace / "data"), model=str(workspace / "model"), **changes)


def _reference(workspace: Path, project: Path, **kw: Any) -> dict[str, float]:
    """The icl-reference stage for _cfg's pools, shots and decoding, 2 demo draws per query: its metrics."""
    from lmmops.stages import run_stage

    cfg = tiny_config("icl-reference", data_dir=str(workspace / "data"), model=str(workspace / "model"), icl_draws=2,
                      **kw)
    return run_stage("icl-reference", cfg, root=project)


@pytest.fixture
def kshot_prompts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The demo count of every k-shot prompt generated in this process from now on (ICLRunner.predict)."""
    from lmmops.icl.inference import ICLRunner

    predict, seen = ICLRunner.predict, []

    def recording_predict(self: Any, prompts: Any, *a: Any, **k: Any) -> Any:
        seen.extend(len(demos) for demos, _query in prompts if demos)
        return predict(self, prompts, *a, **k)

    monkeypatch.setattr(ICLRunner, "predict", recording_predict)
    return seen


class Recorder:
    """Wraps distill and evaluate_vectors as the stage library calls them; records (event, split, ...)."""

    def __init__(self, workspace: Path, monkeypatch: pytest.MonkeyPatch):
        from lmmops.data.loaders import load_vqa

        self.split_of = {it.question_id: s for s in ("train", "val", "test") for it in load_vqa(workspace / "data", s)}
        self.events: list[tuple[str, ...]] = []
        distill, evaluate = pool_training.distill, evaluation.evaluate_vectors

        def recording_distill(*a: Any, **k: Any) -> Any:
            self.events.append(("distill", str(k.get("stop_after"))))
            return distill(*a, **k)

        def recording_evaluate(model: Any, processor: Any, vectors: Any, items: Any, **k: Any) -> Any:
            splits = {self.split_of[it.question_id] for it in items}
            assert len(splits) == 1, splits
            pools = {VQA_POOL if not it.is_icl else it.question_type for it in items}
            self.events.append(("evaluate", splits.pop(), "zero-shot" if vectors is None else "vectors", *pools))
            return evaluate(model, processor, vectors, items, **k)

        monkeypatch.setattr(pool_training, "distill", recording_distill)
        monkeypatch.setattr(evaluation, "evaluate_vectors", recording_evaluate)


def test_mimic_stage_selects_on_val_tests_once_and_registers_a_pyfunc(
    workspace: Path, project: Path, monkeypatch: pytest.MonkeyPatch, kshot_prompts: list[int]
) -> None:
    import mlflow
    import pandas as pd

    from lmmops import report, tracking
    from lmmops.data.loaders import load_vqa
    from lmmops.models import adapter_for, load_model
    from lmmops.stages import metrics_path, run_stage
    from lmmops.vectors import MimicVectors

    # the icl-reference stage scores the 2-shot ICL reference (2 draws of 2-shot prompts per test item) ...
    reference = _reference(workspace, project)
    assert kshot_prompts and set(kshot_prompts) == {2}
    assert json.loads(metrics_path(project, "icl-reference").read_text()) == reference
    kshot_prompts.clear()
    recorder = Recorder(workspace, monkeypatch)
    cfg = _cfg(MimicStageConfig, workspace)
    metrics = run_stage("mimic", cfg, root=project)
    # ... which mimic reads: the same numbers, no k-shot prompt generated
    assert kshot_prompts == []
    assert all(metrics[f"icl_acc/{p}"] == reference[f"icl_acc/{p}"] for p in POOLS)
    assert metrics["icl_acc/mean"] == reference["icl_acc/mean"]

    # validation-only selection: val with vectors after each segment, the test split once per pool, at the end
    events = recorder.events
    last_distill = max(i for i, e in enumerate(events) if e[0] == "distill")
    for pool in POOLS:
        val = [i for i, e in enumerate(events) if e[:3] == ("evaluate", "val", "vectors") and e[3] == pool]
        test = [i for i, e in enumerate(events) if e[:3] == ("evaluate", "test", "vectors") and e[3] == pool]
        assert len(val) == cfg.selection_rounds and len(test) == 1, events
        assert test[0] > last_distill  # the test split is scored only after every pool is trained
    assert not [e for e in events if e[1] == "train"]
    assert [e[1] for e in events if e[0] == "distill"] == ["2", "4"] * len(POOLS)  # two segments of one schedule

    for key in ("test_acc/mean", "zero_shot_acc/mean", "icl_acc/mean", "val_acc/mean",
                *(f"{m}/{p}" for m in ("test_acc", "zero_shot_acc", "icl_acc", "val_acc") for p in POOLS)):
        assert 0.0 <= metrics[key] <= 1.0, key
    tiny_model, tiny_processor = load_model(workspace / "model")
    expected = MimicVectors.for_adapter(adapter_for(tiny_model, tiny_processor)).num_parameters()
    assert metrics["trainable_params"] == expected
    assert metrics["gap_to_icl/mean"] == pytest.approx(metrics["icl_acc/mean"] - metrics["test_acc/mean"])
    assert metrics["icl_draws"] == reference["icl_draws"] == 2
    for p in POOLS:  # the paired gap on the same items: its mean is the difference of the two accuracies
        assert metrics[f"gap_to_icl/{p}"] == pytest.approx(metrics[f"icl_acc/{p}"] - metrics[f"test_acc/{p}"])
        assert metrics[f"test_items/{p}"] >= 1
        assert metrics.get(f"gap_to_icl_se/{p}", 0.0) >= 0  # absent (not NaN) for a pool of one test item
    assert json.loads(metrics_path(project, "mimic").read_text()) == metrics  # deterministic: no timings

    # the bundle: one vector file per pool, the manifest; the report files; the resumable checkpoints
    manifest = json.loads((project / "models/mimic/manifest.json").read_text())
    assert manifest["method"] == "mimic" and set(manifest["pools"]) == set(POOLS)
    assert manifest["default_pool"] == "vqa" and manifest["teacher"] == {"strategy": "RS-within-task", "shots": 2}
    assert manifest["base_model"]["registered"] is False and manifest["base_model"]["version"].startswith("sha:")
    for entry in manifest["pools"].values():
        assert (project / "models/mimic" / entry["path"] / "vectors.safetensors").is_file()
    assert not list((project / "models").glob(".mimic.tmp-*"))
    assert "MimIC" in (project / "reports/mimic/results.md").read_text()
    results = json.loads((project / "reports/mimic/results.json").read_text())
    assert results["registered"]["version"] == "1" and results["registered"]["champion"] is True
    # the test accuracies also without the near-duplicate test items: the same per-item scores, filtered
    dup = {it.question_id: it.near_duplicate_of is not None for it in load_vqa(workspace / "data", "test")}
    assert any(dup[s["question_id"]] for p in POOLS for s in results["pools"][p]["test_samples"])
    for p in POOLS:
        kept = [s["accuracy"] for s in results["pools"][p]["test_samples"] if not dup[s["question_id"]]]
        assert metrics[f"test_items_nodup/{p}"] == len(kept)
        assert metrics[f"test_acc_nodup/{p}"] == pytest.approx(sum(kept) / len(kept))
        assert metrics[f"gap_to_icl_nodup/{p}"] == pytest.approx(metrics[f"icl_acc_nodup/{p}"]
                                                                 - metrics[f"test_acc_nodup/{p}"])
        assert 0.0 <= metrics[f"zero_shot_acc_nodup/{p}"] <= 1.0
    for family in ("test_acc", "zero_shot_acc", "icl_acc"):
        assert metrics[f"{family}_nodup/mean"] == pytest.approx(sum(metrics[f"{family}_nodup/{p}"] for p in POOLS)
                                                                 / len(POOLS))
    assert "Without near-duplicates" in (project / "reports/mimic/results.md").read_text()
    assert len(list((project / "checkpoints/mimic").glob("*/round-*.pt"))) == 2 * len(POOLS)

    # MLflow: every logged step, the selection curve, the timings; the registered version with aliases and tags
    run = tracking.latest_stage_runs(project, ["mimic"])[0]
    info = tracking.run_info(run["run_id"])
    assert info["status"] == "FINISHED" and "latency_rel" in info["metrics"] and info["metrics"]["latency_rel"] > 0
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/vqa/loss")
    assert [int(m.step) for m in history] == [1, 2, 3, 4]  # each step once, across the segments' resumes
    assert len(mlflow.MlflowClient().get_metric_history(run["run_id"], "selection/val_acc/vqa")) == 2
    assert tracking.alias_version("lmmops-mimic", "champion") == tracking.alias_version("lmmops-mimic",
                                                                                       "challenger") == "1"
    tags = mlflow.MlflowClient().get_model_version("lmmops-mimic", "1").tags
    assert tags["teacher_strategy"] == "RS-within-task" and tags["shots"] == "2" and tags["method"] == "mimic"
    assert float(tags["val_acc_mean"]) == pytest.approx(metrics["val_acc/mean"])
    assert tags["base_model_version"] == manifest["base_model"]["version"]

    # the pyfunc answers a question on a test image (by path, and by bytes with a task)
    test_items = load_vqa(workspace / "data", "test")
    icl_item = next(it for it in test_items if it.question_type == "icl/colour/en")
    model = mlflow.pyfunc.load_model("models:/lmmops-mimic@champion")
    answers = model.predict(pd.DataFrame({
        "image": [str(test_items[0].image_path), icl_item.image_path.read_bytes()],
        "question": [test_items[0].question, icl_item.question],
        "task": [None, "icl/colour/en"],
    }))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(ValueError, match="unknown task 'icl/nope'"):
        model.predict(pd.DataFrame({"image": [str(icl_item.image_path)], "question": ["?"], "task": ["icl/nope"]}))

    # `lmmops report`: the in-context vectors table (zero-shot, k-shot ICL, MimIC), also in --json
    data = report.collect(project)
    rows = {r["method"]: r for r in data["vectors"]["rows"]}
    assert {"zero-shot", "2-shot ICL", "MimIC"} <= set(rows)
    assert rows["2-shot ICL"]["icl_draws"] == 2
    assert rows["MimIC"]["test_acc"] == pytest.approx(metrics["test_acc/mean"])
    assert rows["MimIC"]["trainable_params"] == metrics["trainable_params"]
    assert rows["zero-shot"]["latency_rel"] == 1.0 and rows["MimIC"]["latency_rel"] == info["metrics"]["latency_rel"]
    assert set(rows["MimIC"]["test_acc_per_pool"]) == set(POOLS)
    assert rows["MimIC"]["test_acc_nodup"] == pytest.approx(metrics["test_acc_nodup/mean"])
    assert rows["2-shot ICL"]["test_acc_nodup"] == pytest.approx(metrics["icl_acc_nodup/mean"])
    assert rows["zero-shot"]["test_acc_nodup_per_pool"] == pytest.approx(
        {p: metrics[f"zero_shot_acc_nodup/{p}"] for p in POOLS})
    assert set(rows["MimIC"]["gap_to_icl_nodup_per_pool"]) == set(POOLS)
    assert report.print_report(project) == 0  # the printed table has the column "without near-duplicates"


def test_live_stage_with_a_registered_base_resumes_and_respects_the_margin(
    workspace: Path, project: Path, monkeypatch: pytest.MonkeyPatch, kshot_prompts: list[int]
) -> None:
    import mlflow
    import pandas as pd

    from lmmops import tracking
    from lmmops.data.loaders import load_vqa
    from lmmops.stages import run_stage

    # the base model is a registered lmmops-base version: the bundle references it instead of carrying it
    tracking.configure(project)
    with mlflow.start_run(run_name="bootstrap"):
        run = tracking.StageRun(mlflow.active_run().info.run_id, "", project)
        base_version = tracking.register_model(tracking.log_model_dir(run, workspace / "model", "model"),
                                               "lmmops-base")
    reference = _reference(workspace, project)
    kshot_prompts.clear()
    cfg = _cfg(LiveStageConfig, workspace)
    first = run_stage("live", cfg, root=project)
    assert all(first[f"icl_acc/{p}"] == reference[f"icl_acc/{p}"] for p in POOLS)
    manifest = json.loads((project / "models/live/manifest.json").read_text())
    assert manifest["base_model"] == {"name": "lmmops-base", "version": base_version, "registered": True,
                                      "path": str(workspace / "model")}

    # a second run of the same config resumes every segment (no training step runs) and selects the same;
    # with a margin it cannot beat, it is the challenger and the champion stays
    recorder = Recorder(workspace, monkeypatch)
    steps_run: list[int] = []
    from lmmops.vectors import train as train_mod

    monkeypatch.setattr(train_mod, "sample_step", lambda *a, **k: steps_run.append(k["step"]) or [])
    # ... and, as the first, reads the icl-reference stage's output (the same numbers, no k-shot generation)
    second = run_stage("live", dataclasses.replace(cfg, promote_margin=0.5), root=project)
    assert steps_run == [] and second == first and kshot_prompts == []
    assert [e[1] for e in recorder.events if e[0] == "distill"] == ["2", "4"] * len(POOLS)
    assert tracking.alias_version("lmmops-live", "challenger") == "2"
    assert tracking.alias_version("lmmops-live", "champion") == "1"
    # margin 0 and an equal score: champion moves (>=)
    run_stage("live", cfg, root=project)
    assert tracking.alias_version("lmmops-live", "champion") == tracking.alias_version("lmmops-live",
                                                                                     "challenger") == "3"

    item = load_vqa(workspace / "data", "test")[0]
    model = mlflow.pyfunc.load_model("models:/lmmops-live@champion")  # loads models:/lmmops-base/<version>
    [answer] = model.predict(pd.DataFrame({"image": [str(item.image_path)], "question": [item.question]}))
    assert isinstance(answer, str)


def test_promotion_reads_the_val_accuracy_tags(project: Path) -> None:
    import mlflow

    from lmmops import tracking

    tracking.configure(project)
    (project / "artifact").mkdir()
    (project / "artifact" / "x.txt").write_text("x")
    with mlflow.start_run():
        run = tracking.StageRun(mlflow.active_run().info.run_id, "", project)
        uri = tracking.log_model_dir(run, project / "artifact", "m")
    versions = [tracking.register_model(uri, "lmmops-test", tags={"val_acc_mean": s}) for s in (0.5, 0.52, 0.6)]
    assert tracking.promote_by_tag("lmmops-test", versions[0], tag="val_acc_mean", margin=0.05)  # no champion yet
    assert not tracking.promote_by_tag("lmmops-test", versions[1], tag="val_acc_mean", margin=0.05)  # +0.02 < 0.05
    assert tracking.alias_version("lmmops-test", "champion") == versions[0]
    assert tracking.alias_version("lmmops-test", "challenger") == versions[1]
    assert tracking.promote_by_tag("lmmops-test", versions[2], tag="val_acc_mean", margin=0.05)  # +0.10
    assert tracking.alias_version("lmmops-test", "champion") == versions[2]
    untagged = tracking.register_model(uri, "lmmops-test")
    with pytest.raises(ValueError, match="val_acc_mean"):
        tracking.promote_by_tag("lmmops-test", untagged, tag="val_acc_mean", margin=0.0)


def test_bad_tasks_and_a_mismatched_reference_fail_before_training(workspace: Path, project: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lmmops import models
    from lmmops.stages import run_stage
    from lmmops.vectors.icl_reference import IclReferenceMismatch

    _reference(workspace, project)

    def no_model(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(pool_training, "distill", no_model)
    with pytest.raises(ValueError, match=r"live\.tasks: unknown task pool 'icl/colour/fr'.*icl/colour/en"):
        run_stage("live", _cfg(LiveStageConfig, workspace, tasks=("vqa", "icl/colour/fr")), root=project)
    with pytest.raises(ValueError, match=r"mimic\.tasks: pool 'icl/colour/en' has 4 train items; 16-shot"):
        run_stage("mimic", _cfg(MimicStageConfig, workspace, shots=16), root=project)
    # the ICL reference must be the icl-reference stage's output for the same pools, shots and decoding
    with pytest.raises(FileNotFoundError, match=r"no ICL reference at .*elsewhere.*dvc repro icl-reference"):
        run_stage("live", _cfg(LiveStageConfig, workspace, icl_reference="elsewhere"), root=project)
    with pytest.raises(IclReferenceMismatch, match=r"reports/icl_reference/manifest\.json: decoding\.max_new_tokens"
                                                   r" is 3 there, mimic evaluates with 4; run `dvc repro icl-refer"):
        run_stage("mimic", _cfg(MimicStageConfig, workspace, max_new_tokens=4), root=project)
    with pytest.raises(IclReferenceMismatch, match=r"shots is 2 there, live evaluates with 3"):
        run_stage("live", _cfg(LiveStageConfig, workspace, shots=3), root=project)


def test_selection_keeps_the_best_val_segment_and_resumes_it(workspace: Path, tmp_path: Path) -> None:
    from lmmops.data.loaders import load_vqa
    from lmmops.models import load_model

    model, processor = load_model(workspace / "model")
    pool = task_pools(load_vqa(workspace / "data", "train"))["vqa"]
    cfg = tiny_distill("live", train={"steps": 6, "lr": 0.05})
    scores = iter([0.2, 0.9, 0.5])
    seen: list[dict[str, torch.Tensor]] = []

    def fake_val(vectors: Any) -> float:
        seen.append({k: v.detach().clone() for k, v in vectors.state_dict().items()})
        return next(scores)

    result = pool_training.train_and_select(cfg, model, processor, pool, rounds=3, checkpoint_dir=tmp_path,
                                            evaluate_val=fake_val)
    assert pool_training.segment_ends(6, 3) == [2, 4, 6] and pool_training.segment_ends(2, 3) == [1, 2]
    assert result.step == 4 and result.val_acc == 0.9 and [r["step"] for r in result.rounds] == [2.0, 4.0, 6.0]
    assert all(torch.equal(v, seen[1][k]) for k, v in result.vectors.state_dict().items())
    assert not torch.equal(seen[0]["vectors"], seen[2]["vectors"])  # training moved the vectors

    # resumed after the last segment: each segment end's vectors come back from its snapshot
    again: list[dict[str, torch.Tensor]] = []
    pool_training.train_and_select(cfg, model, processor, pool, rounds=3, checkpoint_dir=tmp_path,
                                   evaluate_val=lambda v: again.append(dict(v.state_dict())) or 0.0)
    assert all(torch.equal(a[k], s[k]) for a, s in zip(again, seen, strict=True) for k in s)


@pytest.mark.parametrize("method", ["live", "mimic"])
def test_pools_trained_in_two_processes_equal_the_sequential_run(workspace: Path, tmp_path: Path, method: str) -> None:
    from lmmops.data.loaders import load_vqa
    from lmmops.models import load_model

    model, processor = load_model(workspace / "model")
    splits = {s: load_vqa(workspace / "data", s) for s in SPLITS}
    pools = select_pools(splits, POOLS, shots=2, where="test.tasks")
    cfg = tiny_distill(method, train={"lr": 0.05})
    eval_kw = {"batch_size": 16, "max_new_tokens": 3}
    runs: dict[int, tuple[dict[str, Any], list[tuple[str, int]], list[str]]] = {}
    for workers in (1, 2):
        logged: list[tuple[str, int]] = []
        finished: list[str] = []
        out = pool_training.train_pools(cfg, model, processor, pools, rounds=2,
                                        checkpoint_dir=tmp_path / str(workers), eval_kw=eval_kw, workers=workers,
                                        model_spec=str(workspace / "model"),
                                        on_log=lambda pool, step, values, logged=logged: logged.append((pool, step)),
                                        on_pool=lambda r, finished=finished: finished.append(r.pool), progress=False)
        runs[workers] = (out, logged, finished)
    (seq, seq_log, seq_done), (par, par_log, par_done) = runs[1], runs[2]
    assert list(par) == list(seq) == list(POOLS) and sorted(par_done) == sorted(seq_done) == sorted(POOLS)
    assert sorted(par_log) == sorted(seq_log) and len(seq_log) == 4 * len(POOLS)  # every step once per pool
    for pool in POOLS:
        a, b = seq[pool], par[pool]
        same = ("step", "val_acc", "rounds", "total_steps", "key")
        assert [getattr(a, f) for f in same] == [getattr(b, f) for f in same]
        assert [{k: v for k, v in h.items() if "seconds" not in k} for h in a.history] == \
            [{k: v for k, v in h.items() if "seconds" not in k} for h in b.history]
        sa, sb = a.vectors.state_dict(), b.vectors.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), pool  # bit-identical
    with pytest.raises(ValueError, match="model_spec"):
        pool_training.train_pools(cfg, model, processor, pools, rounds=2, checkpoint_dir=tmp_path / "x",
                                  eval_kw=eval_kw, workers=2)


@pytest.mark.slow
def test_two_ranks_under_torchrun_track_and_register_once(workspace: Path, project: Path) -> None:
    """`torchrun --nproc_per_node 2 -m lmmops.cli live` with ZeRO-2 on CPU: both ranks train, rank 0 alone opens
    the MLflow run, writes the metrics file and the bundle and registers one version."""
    import mlflow

    from lmmops import tracking
    from lmmops.tracking import STAGE_TAG

    repo = Path(__file__).resolve().parents[2]
    live = merged(TINY["live"], {"data_dir": str(workspace / "data"), "model": str(workspace / "model"),
                                 "tasks": ["icl/colour/en"], "train": {"steps": 2}, "selection_rounds": 1,
                                 "deepspeed": str(repo / "infra/deepspeed/zero2.json")})
    (project / "params.yaml").write_text(json.dumps({"live": live}))  # JSON is YAML
    _reference(workspace, project)  # reports/icl_reference/, which live reads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lmmops.cli", "live"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=500)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "stage live: rank 1: done" in out and "stage live: done" in out
    tracking.configure(project)  # this project's store (an earlier test may have pointed mlflow elsewhere)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{STAGE_TAG}` = 'live'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    versions = mlflow.MlflowClient().search_model_versions("name = 'lmmops-live'")
    assert [str(v.version) for v in versions] == ["1"]
    assert json.loads((project / "metrics/live.json").read_text())["pools"] == 1.0
    assert (project / "models/live/manifest.json").is_file()


def test_bundle_refuses_another_base_model(workspace: Path, tmp_path: Path) -> None:
    from lmmops.models import adapter_for, load_model
    from lmmops.vectors import LiveVectors, VectorMismatchError
    from lmmops.vectors.bundle import BaseModelRef, fingerprint_version, load_bundle, save_bundle

    model, processor = load_model(workspace / "model")
    vectors = {"vqa": LiveVectors.for_adapter(adapter_for(model, processor)),
               "icl/colour/en": LiveVectors.for_adapter(adapter_for(model, processor), seed=1)}
    version = fingerprint_version(model, processor)
    out = save_bundle(tmp_path / "b", vectors, model, method="live", base=BaseModelRef("m", version, False),
                      shots=2, val_acc={"vqa": 0.5, "icl/colour/en": 0.7})
    bundle = load_bundle(out, model, processor, base_model="m", base_model_version=version)
    assert bundle.pools == ["vqa", "icl/colour/en"] and bundle.default_pool == "vqa"
    assert bundle.manifest["val_acc_mean"] == pytest.approx(0.6)
    assert torch.equal(bundle.vectors["icl/colour/en"].vectors, vectors["icl/colour/en"].vectors)
    with pytest.raises(VectorMismatchError, match=r"base_model_version: 'sha:.*' vs 'sha:other'"):
        load_bundle(out, model, processor, base_model="m", base_model_version="sha:other")
    with pytest.raises(ValueError, match="mimic"):
        save_bundle(tmp_path / "c", vectors, model, method="mimic", base=BaseModelRef("m", version, False), shots=2,
                    val_acc={"vqa": 0.5, "icl/colour/en": 0.7})
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp-*"))


def test_nan_loss_fails_the_stage_run_and_keeps_the_last_good_checkpoint(
    workspace: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from lmmops import tracking
    from lmmops.stages import run_stage
    from lmmops.vectors import train as train_mod
    from lmmops.vectors.train import NonFiniteLossError

    calls = {"n": 0}
    live_loss = train_mod.live_loss

    def nan_at_step_3(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        parts = live_loss(*args, **kwargs)
        return parts._replace(total=parts.total * float("nan")) if calls["n"] == 3 else parts

    monkeypatch.setattr(train_mod, "live_loss", nan_at_step_3)
    _reference(workspace, project)
    cfg = _cfg(LiveStageConfig, workspace, tasks=("icl/colour/en",), checkpoint_dir="checkpoints/nan")
    with pytest.raises(NonFiniteLossError, match="step 3"):
        run_stage("live", cfg, root=project)
    # the checkpoint of the last good step is on disk; the MLflow run of the stage is FAILED
    (ckpt,) = (project / "checkpoints/nan").glob("*/last.pt")
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    tracking.configure(project)
    [latest] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`lmmops.stage` = 'live'",
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    assert latest.info.status == "FAILED"
    assert not (project / "models/live").exists() or (project / "models/live/manifest.json").is_file()
