"""The `lmmops` command line: help lists the stages, bad params fail with the key and file named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lmmops.cli import main
from lmmops.stages import STAGES

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "lmmops.cli", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out
    assert "report" in out


def test_misspelled_key_exits_2_and_names_it(tmp_path: Path, capsys, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  decode_imagez: true\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "unknown key validate.decode_imagez" in err
    assert str(params) in err


def test_no_command_prints_help(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "the pipeline stages first" in capsys.readouterr().out
