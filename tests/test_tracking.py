"""MLflow tracking: lineage tags, dataset inputs, nested runs, the registry and the stage runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lmmops import stages, tracking
from lmmops.config import params_hash

from testutil import git


@dataclass(frozen=True)
class EchoConfig:
    value: int = 3


def echo_impl(cfg: EchoConfig, ctx: stages.StageContext) -> dict[str, float]:
    df = pd.DataFrame({"x": [1, 2, 3]})
    ctx.run.log_dataset(df, name="echo-data", source=str(ctx.root / "data"), digest="abc123")
    with ctx.run.child("sub-step", tags={"kind": "child"}) as child:
        child.log_metrics({"inner": 1.0})
    return {"value": float(cfg.value), "rows": 3.0}


def failing_impl(cfg: EchoConfig, ctx: stages.StageContext) -> dict[str, float]:
    raise stages.StageFailed("2 rows are bad", {"failures": 2.0})


@pytest.fixture
def echo_stage(monkeypatch):
    monkeypatch.setitem(stages.STAGES, "echo", stages.Stage("echo", f"{__name__}:echo_impl", "test", ("value",)))
    monkeypatch.setitem(stages.STAGES, "boom", stages.Stage("boom", f"{__name__}:failing_impl", "test"))


def test_stage_run_carries_lineage_params_and_dataset(project: Path, echo_stage):
    metrics = stages.run_stage("echo", EchoConfig(value=5), root=project)
    assert metrics == {"value": 5.0, "rows": 3.0}
    assert json.loads((project / "metrics" / "echo.json").read_text()) == metrics

    [latest] = tracking.latest_stage_runs(project, ["echo"])
    assert latest["status"] == "FINISHED"
    assert latest["metrics"] == {"value": 5.0}  # only the key metrics
    info = tracking.run_info(latest["run_id"])
    head = git(project, "rev-parse", "HEAD").strip()
    assert info["tags"]["mlflow.source.git.commit"] == head
    assert info["tags"]["lmmops.git_commit"] == head
    assert info["tags"]["lmmops.git_dirty"] == "false"  # metrics/ is pipeline output, not code
    assert info["tags"]["lmmops.dvc_data_md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert info["tags"]["lmmops.params_hash"] == params_hash(EchoConfig(value=5))
    assert info["tags"]["lmmops.stage"] == "echo"
    assert info["params"] == {"value": "5"}
    assert info["metrics"]["seconds"] >= 0
    [dataset] = info["inputs"]
    assert (dataset["name"], dataset["digest"], dataset["context"]) == ("echo-data", "abc123", "input")
    assert str(project / "data") in dataset["source"]


def test_dirty_flag_follows_code_changes(project: Path, echo_stage):
    (project / "params.yaml").write_text("validate: {}\n")  # a tracked file changes
    stages.run_stage("echo", EchoConfig(), root=project)
    [latest] = tracking.latest_stage_runs(project, ["echo"])
    assert latest["git_dirty"] == "true"


def test_failed_stage_marks_run_failed_and_keeps_metrics(project: Path, echo_stage):
    with pytest.raises(stages.StageFailed):
        stages.run_stage("boom", EchoConfig(), root=project)
    [latest] = tracking.latest_stage_runs(project, ["boom"])
    assert latest["status"] == "FAILED"
    assert latest["metrics"]["failures"] == 2.0
    assert not (project / "metrics" / "boom.json").exists()


def test_registry_aliases_and_promotion(project: Path, tmp_path: Path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("w1")
    with tracking.stage_run("echo", root=project, params={}, params_hash="h") as run:
        uri = tracking.log_model_dir(run, model_dir, "model")
    v1 = tracking.register_model(uri, "lmmops-test", tags={"teacher": "RS-8"})
    assert tracking.promote_if_better("lmmops-test", v1, score=0.5, champion_score=None, margin=0.01)
    assert tracking.alias_version("lmmops-test", "champion") == v1

    (model_dir / "weights.txt").write_text("w2")
    with tracking.stage_run("echo", root=project, params={}, params_hash="h") as run:
        uri2 = tracking.log_model_dir(run, model_dir, "model")
    v2 = tracking.register_model(uri2, "lmmops-test")
    # not better by the margin: challenger moves, champion stays
    assert not tracking.promote_if_better("lmmops-test", v2, score=0.505, champion_score=0.5, margin=0.01)
    assert tracking.alias_version("lmmops-test", "challenger") == v2
    assert tracking.alias_version("lmmops-test", "champion") == v1
    assert tracking.promote_if_better("lmmops-test", v2, score=0.6, champion_score=0.5, margin=0.01)
    assert tracking.alias_version("lmmops-test", "champion") == v2
    assert tracking.alias_version("lmmops-test", "nope") is None

    local = tracking.download_artifacts("models:/lmmops-test@champion", tmp_path / "dl")
    assert (local / "weights.txt").read_text() == "w2"


def test_resolve_model_spec_gives_the_checkpoint_directory(project: Path, tmp_path: Path):
    """models:/ and runs:/ URIs become the local save_pretrained directory that load_model takes."""
    flat, nested, empty = tmp_path / "flat", tmp_path / "nested" / "artifacts" / "model", tmp_path / "empty"
    for path in (flat, nested, empty / "bundle"):
        path.mkdir(parents=True)
    (flat / "config.json").write_text('{"model_type": "llava"}')
    (nested / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (empty / "bundle" / "vectors.txt").write_text("v")
    with tracking.stage_run("echo", root=project, params={}, params_hash="h") as run:
        uris = {k: tracking.log_model_dir(run, p, k) for k, p in
                (("flat", flat), ("nested", tmp_path / "nested"), ("empty", empty))}
    version = tracking.register_model(uris["flat"], "lmmops-resolve")
    tracking.set_alias("lmmops-resolve", "champion", version)
    for uri in ("models:/lmmops-resolve@champion", f"models:/lmmops-resolve/{version}", uris["flat"]):
        local = Path(tracking.resolve_model_spec(uri))
        assert (local / "config.json").read_text() == '{"model_type": "llava"}', uri
    # A tree with the checkpoint one level down (e.g. a pyfunc model's artifacts/) gives that directory.
    assert (Path(tracking.resolve_model_spec(uris["nested"])) / "config.json").read_text() == \
        '{"model_type": "qwen2_vl"}'
    with pytest.raises(FileNotFoundError, match=uris["empty"]):
        tracking.resolve_model_spec(uris["empty"])
    # Specs that are no URI come back unchanged (a Windows drive is no scheme).
    for spec in ("tiny:llava", "models/base", str(flat), "C:/models/base", "models/x/model.gguf"):
        assert tracking.resolve_model_spec(spec) == spec


def test_report_json(project: Path, echo_stage, capsys):
    from lmmops.report import print_report

    stages.run_stage("echo", EchoConfig(), root=project)
    assert print_report(project, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in data["stages"]] == ["echo"]
    assert "generate" in data["missing_stages"]
    assert print_report(project) == 0
    assert "lmmops: latest run of each stage" in capsys.readouterr().out
