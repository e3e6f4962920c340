"""Test-suite setup: the same environment as the entry points (telemetry off, caches in the repo,
offline), and fixtures for a throw-away project with its own git repo and MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmmops.env import configure_environment

from testutil import git

REPO = Path(__file__).resolve().parents[1]
configure_environment(REPO)


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
