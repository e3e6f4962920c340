"""Prefect flows: thin wiring over run_stage, run under prefect_test_harness (fresh temp database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmmops import stages, tracking

from test_tracking import EchoConfig

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_order_is_dvc_yaml_order():
    from flows.pipeline import dvc_stage_order

    assert dvc_stage_order(REPO) == list(stages.STAGES)


def test_flows_import_no_torch():
    import subprocess
    import sys

    code = "import sys, flows.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_stage_flows_run_under_prefect(project: Path, monkeypatch, tmp_path: Path):
    from prefect.testing.utilities import prefect_test_harness

    import flows.pipeline as pipeline_mod
    import flows.stages as stage_flows

    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "prefect-results"))
    monkeypatch.setitem(stages.STAGES, "echo", stages.Stage("echo", "test_tracking:echo_impl", "test", ("value",)))
    monkeypatch.setitem(stage_flows.STAGE_FLOWS, "echo", stage_flows._make_stage_flow("echo"))
    # the task loads the config from params.yaml: give the echo stage a typed section
    from lmmops import config

    monkeypatch.setitem(config.STAGE_CONFIGS, "echo", EchoConfig)
    (project / "params.yaml").write_text("echo:\n  value: 7\n")

    with prefect_test_harness(server_startup_timeout=120):
        result = pipeline_mod.pipeline(root=str(project), stages=["echo"])
    assert result == {"echo": {"value": 7.0, "rows": 3.0}}
    [run] = tracking.latest_stage_runs(project, ["echo"])
    assert run["status"] == "FINISHED" and run["metrics"] == {"value": 7.0}
