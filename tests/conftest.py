"""Test-suite setup: the same environment as the entry points (telemetry off, caches in the repo,
offline), and fixtures: a throw-away project with its own git repo and MLflow store (`project`), and the tiny
generated data and model that the stage tests share (`workspace`, read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmmops.env import configure_environment

from testutil import git, tiny_project

REPO = Path(__file__).resolve().parents[1]
configure_environment(REPO)
os.environ["HF_HUB_OFFLINE"] = "1"  # tests download nothing, ever, whatever the caller's environment says
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test-size data (`data/`: every VQA pool has train, val and test items) and the test-size LLaVA trained for 2
    steps (`model/`), made once per session (testutil.tiny_project). Read-only: a test that edits them overrides
    this fixture with a copy of its own."""
    return tiny_project(tmp_path_factory.mktemp("tiny-project"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny git repo with params.yaml and data.dvc, and an MLflow store of its own."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text("validate:\n  decode_images: false\n")
    (root / "data.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 3\n  nfiles: 1\n  hash: md5\n  path: data\n"
    )
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    (root / "mlflow").mkdir()
    monkeypatch.chdir(root)
    return root
