"""Fixtures for the data-layer tests: a small generated tree (made once per session) and copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from data_helpers import SMALL

from lmmops.data import generate_all


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(data dir, summary) of SMALL, generated once; tests must not modify it (use data_copy)."""
    root = tmp_path_factory.mktemp("gen")
    summary = generate_all(SMALL, root, progress=False)
    return root / SMALL.out_dir, summary


@pytest.fixture
def data_copy(generated: tuple[Path, dict], tmp_path: Path) -> Path:
    """A private copy of the generated data directory, free to corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(generated[0], dst)
    return dst
