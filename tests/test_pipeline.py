"""End to end on a copy of this working tree: `lmmops ensure-data`, `dvc repro` twice (the second is a
no-op), the report, and a corrupt row stopping the pipeline. What `make run` does, at test sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testutil import git

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small sizes: the point here is the wiring, not the data.
TINY_PARAMS = {
    "generate": {
        "seed": 0,
        "out_dir": "data",
        "vqa": {"train": 60, "val": 20, "test": 20},
        "deepscaler": {"train": 20, "test": 10},
        "multimodal": {"multimath_train": 6, "multimath_test": 4, "geo_train": 6, "geo_test": 4,
                       "perce_reason_train": 6, "perce_reason_test": 4},
        "sokoban": {"train": 4, "test": 2},
    },
    # Every stage that trains needs a tiny override here, or this test trains at full size.
    "bootstrap": {
        "text_hidden": 32, "text_layers": 1, "text_heads": 2, "text_kv_heads": 1, "text_intermediate": 64,
        "vision_hidden": 16, "vision_layers": 1, "vision_heads": 1, "vision_intermediate": 32,
        "steps": 10, "batch_size": 4, "warmup_steps": 2, "max_shots": 2, "vqa_pack": 2,
        "long_icl_rows": 1, "long_max_shots": 4,
        "checkpoint_every": 5, "log_every": 5, "eval_shots": [0, 1], "eval_repeats": 1, "eval_max_new_tokens": 8,
    },
    "index": {"batch_size": 16},
    "icl-eval": {"max_queries": 6, "strategies": ["zero-shot", "RS", "SI", "SQ", "SQA"], "shots": [1, 2],
                 "manipulations": ["wrong_answer"], "analysis_shots": 2, "max_new_tokens": 3},
    **{method: {"tasks": ["icl/colour/en", "vqa"], "shots": 2, "steps": 2, "batch_size": 4, "selection_rounds": 2,
                "eval_batch_size": 16, "max_new_tokens": 3, "latency_repeats": 1, "log_every": 1}
       for method in ("live", "mimic")},
    "vector-baselines": {"tasks": ["icl/colour/en", "vqa"], "shots": 2, "max_new_tokens": 3,
                         "lora": {"epochs": 1, "batch_size": 8}, "task_vector": {"prompts": 4},
                         "function_vector": {"prompts": 4, "corrupted_prompts": 2, "heads": 2},
                         "icv": {"pairs": 4, "strengths": [0.1]}},
}


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
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        if section in params:  # stages that exist in this tree
            params[section] = {**params[section], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for p in ("data", "data.dvc", "dvc.lock", "metrics", "reports", "models", "checkpoints", "mlflow/mlflow.db",
              "mlflow/artifacts"):
        target = root / p
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fresh")
    return root


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
    assert "Data and pipelines are up to date." in again.stdout
    assert "Running stage" not in again.stdout

    report = _run(root, "lmmops", "report", "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    by_stage = {r["stage"]: r for r in data["stages"]}
    assert {"generate", "validate"} <= set(by_stage)
    assert by_stage["validate"]["metrics"]["success"] == 1.0
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


def test_corrupt_row_stops_validate_with_a_named_row(fresh_clone: Path):
    root = fresh_clone
    rows_file = next((root / "data").rglob("*.jsonl"))
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
