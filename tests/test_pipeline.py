"""End to end on a copy of this working tree: `lmmops ensure-data`, `dvc repro` twice (the second is a
no-op), the report, and a corrupt row stopping the pipeline. What `make run` does, at test sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testutil import TINY, git, merged

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_params(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml at test size: every stage section of this tree with testutil.TINY's keys over it (the point here
    is the wiring, not the data)."""
    return {section: merged(values, TINY.get(section, {})) for section, values in params.items()}


def test_tiny_params_are_test_size():
    """No stage of the test pipeline makes or trains on default-size data (e.g. bootstrap's 40,000 generated
    reasoning rows, 1,440 steps, 1,700 VQA test items, 144 LIVE steps, spawned workers)."""
    tiny = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    counts = {f"{family}.{key}": n for family, section in tiny["generate"].items() if isinstance(section, dict)
              for key, n in section.items() if key.split("_")[-1] in ("train", "val", "test")}
    assert counts and max(counts.values()) <= 60, counts
    assert tiny["bootstrap"]["extra_reasoning_rows"] == 0 and tiny["bootstrap"]["steps"] <= 10
    assert tiny["icl-eval"]["max_queries"] <= 8
    for stage in ("live", "mimic"):
        assert tiny[stage]["train"]["steps"] <= 4 and tiny[stage]["workers"] == 1, stage
    assert tiny["vector-baselines"]["workers"] == 1 and tiny["vector-baselines"]["lora"]["epochs"] == 1


def _copy_working_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own embedded store
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clone") / "lmmops"
    root.mkdir()
    _copy_working_tree(root)
    params = tiny_params(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for p in ("data", "data.dvc", "dvc.lock", "metrics", "reports", "models", "checkpoints", "mlflow/mlflow.db",
              "mlflow/artifacts"):
        target = root / p
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fresh")
    return root


@pytest.mark.slow
def test_make_run_steps_then_noop(fresh_clone: Path):
    root = fresh_clone
    first = _run(root, "lmmops", "ensure-data")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "generated it" in first.stdout
    assert (root / "data.dvc").is_file() and (root / "data").is_dir()

    repro = _run(root, "dvc", "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'validate'" in repro.stdout
    assert "Running stage 'index'" in repro.stdout and "Running stage 'icl-eval'" in repro.stdout
    assert "Stage 'generate' didn't change, skipping" in repro.stdout  # ensure-data recorded it

    again = _run(root, "dvc", "repro")
    assert again.returncode == 0, again.stdout + again.stderr
    # validate runs on every repro (always_changed); its report is byte-identical, so nothing after it reruns
    assert [line for line in again.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'validate':"]
    assert "Stage 'bootstrap' didn't change, skipping" in again.stdout

    report = _run(root, "lmmops", "report", "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    by_stage = {r["stage"]: r for r in data["stages"]}
    assert {"generate", "validate"} <= set(by_stage)
    assert by_stage["validate"]["metrics"]["success"] == 1.0
    assert data["duplicates"] and set(data["duplicates"].values()) == {0.0}  # no held-out item repeats a train item
    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert by_stage["validate"]["dvc_data_md5"] == md5
    head = git(root, "rev-parse", "HEAD").strip()
    assert by_stage["validate"]["git_commit"] == head
    assert "acc/RS/1shot" in by_stage["icl-eval"]["metrics"]
    assert "test_acc/mean" in by_stage["live"]["metrics"] and "test_acc/mean" in by_stage["mimic"]["metrics"]
    assert {"zero-shot", "LIVE", "MimIC"} <= {r["method"] for r in data["vectors"]["rows"]}
    assert (root / "models/mimic/manifest.json").is_file() and (root / "reports/live/results.md").is_file()
    assert (root / "reports/icl_eval/accuracy_vs_shots.png").is_file()
    table = _run(root, "lmmops", "report")
    assert "validate" in table.stdout and "make ui" in table.stdout


@pytest.mark.slow
def test_dvc_repro_is_the_first_command_of_a_git_clone(fresh_clone: Path, tmp_path: Path):
    """A clone with data.dvc and dvc.lock committed but no data/ and no DVC cache: `dvc repro` regenerates the
    data and goes on (it used to stop at data.dvc: "missing data 'source'")."""
    origin = tmp_path / "origin"
    shutil.copytree(fresh_clone, origin, ignore=shutil.ignore_patterns("mlflow.db", "artifacts", ".dvcstore"))
    made = _run(origin, "dvc", "repro", "generate")
    assert made.returncode == 0, made.stdout + made.stderr
    git(origin, "add", "-A")
    git(origin, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data version")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert (clone / "data.dvc").is_file() and not (clone / "data").exists() and not (clone / ".dvc/cache").exists()
    repro = _run(clone, "dvc", "repro", "validate")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'generate'" in repro.stdout and "Running stage 'validate'" in repro.stdout
    assert (clone / "data.dvc").read_text() == (origin / "data.dvc").read_text()  # the same data version
    report = json.loads((clone / "reports/validate/report.json").read_text())
    assert report["dvc_data_md5"] == yaml.safe_load((clone / "data.dvc").read_text())["outs"][0]["md5"]


@pytest.mark.slow
def test_unversioned_data_stops_validate(fresh_clone: Path):
    """data/ edited without `dvc add`: validate names the difference and how to resolve it."""
    root = fresh_clone
    extra = root / "data" / "unversioned.txt"
    extra.write_text("not in data.dvc\n")
    try:
        repro = _run(root, "dvc", "repro", "validate")
    finally:
        extra.unlink()
    assert repro.returncode != 0
    out = repro.stdout + repro.stderr
    assert "data.dvc" in out and "dvc add data" in out and "modified" in out


@pytest.mark.slow
def test_changed_data_rebuilds_the_index(fresh_clone: Path):
    """A stale index is never reused: new data (one image changed) makes `dvc repro` rebuild it."""
    from PIL import Image

    root = fresh_clone
    image = next((root / "data" / "vqa").rglob("COCO_train2014_*"))
    with Image.open(image) as im:
        pixels = im.convert("RGB")
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    pixels.save(image)
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data"], cwd=root, check=True)
    repro = _run(root, "dvc", "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'index'" in repro.stdout and "Running stage 'icl-eval'" in repro.stdout
    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert json.loads((root / "models/index/index.json").read_text())["data_version"] == md5


@pytest.mark.slow
def test_corrupt_row_stops_validate_with_a_named_row(fresh_clone: Path):
    root = fresh_clone
    rows_file = next(p for p in sorted((root / "data").rglob("*.jsonl")) if len(p.read_text().splitlines()) > 1)
    lines = rows_file.read_text().splitlines()
    row = json.loads(lines[1])
    field = "answer" if "answer" in row else next(iter(row))
    del row[field]
    rows_file.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data"], cwd=root, check=True)
    repro = _run(root, "dvc", "repro")
    assert repro.returncode != 0
    out = repro.stdout + repro.stderr
    assert rows_file.name in out and field in out
