"""dvc.yaml sees every stage boundary: its source deps are exactly the code the stage runs, and every stage that
reads data/ waits for validation.

The code a stage runs is `lmmops.stages` (run_stage) plus the stage's implementation module (the STAGES table),
with everything they import, transitively (tests/importgraph.py). Listed as the fewest paths: a directory when
every module under it runs, else the files. So editing any imported module shows the stage as changed in
`dvc status`, and no stage reruns for a module it never imports. On a mismatch the message prints the list to
paste into dvc.yaml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from importgraph import SRC, closure, module_files

from lmmops.stages import STAGES

ROOT = SRC.parent
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
VALIDATED = "reports/validate"  # the validate stage's report: its existence means data/ passed


def stage_modules(stage: str) -> set[str]:
    module = STAGES[stage].impl.split(":")[0]
    return closure("lmmops.stages", module)


def fewest_paths(modules: set[str]) -> list[str]:
    """Source paths (relative to the repo root) covering exactly the files of `modules`."""
    files = module_files()
    wanted = {files[m] for m in modules}

    def cover(directory: Path) -> list[Path]:
        inside = [p for p in files.values() if directory in p.parents]
        if inside and all(p in wanted for p in inside):
            return [directory]
        out: list[Path] = []
        for child in sorted(directory.iterdir()):
            if child.is_dir() and (child / "__init__.py").exists():
                out += cover(child)
            elif child in wanted:
                out.append(child)
        return out

    return [str(p.relative_to(ROOT)) for p in cover(SRC / "lmmops")]


def source_deps(stage: str) -> list[str]:
    return sorted(d for d in DVC_YAML[stage].get("deps", []) if d.startswith("src/"))


def test_every_lmmops_stage_is_in_dvc_yaml():
    assert set(STAGES) <= set(DVC_YAML)
    for name in STAGES:
        assert DVC_YAML[name]["cmd"] == f"lmmops {name}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_source_deps_are_the_imported_modules(stage):
    expected = sorted(fewest_paths(stage_modules(stage)))
    got = source_deps(stage)
    assert got == expected, (
        f"dvc.yaml stage {stage!r}: the src deps must be the modules it imports.\n"
        f"missing: {sorted(set(expected) - set(got))}\nextra: {sorted(set(got) - set(expected))}\n"
        "paste:\n" + "\n".join(f"      - {p}" for p in expected)
    )


@pytest.mark.parametrize("stage", [s for s in STAGES if s not in ("generate", "validate")])
def test_stages_that_read_data_wait_for_validation(stage):
    deps = DVC_YAML[stage].get("deps", [])
    if "data" in deps:
        assert VALIDATED in deps, f"dvc.yaml stage {stage!r} reads data/ but does not depend on {VALIDATED}"


def test_validate_report_is_validates_output():
    assert VALIDATED in DVC_YAML["validate"]["outs"]


def test_an_edited_module_is_covered():
    """The cover is exact: every module of a stage is under one listed path, and no listed path holds another."""
    files = module_files()
    for stage in STAGES:
        modules = stage_modules(stage)
        paths = [ROOT / p for p in fewest_paths(modules)]
        for m in modules:
            assert any(files[m] == p or p in files[m].parents for p in paths), (stage, m)
        for m in set(files) - modules:
            assert not any(files[m] == p or p in files[m].parents for p in paths), (stage, m)


@pytest.mark.slow
def test_dvc_status_sees_an_edit_to_an_imported_module(tmp_path):
    """With DVC itself: after an edit to a module `generate` imports (two layers down), `dvc status` lists the
    stage as changed; after an edit to a module it never imports, it does not."""
    shutil.copytree(SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for out in ("reports/generate/summary.json", "metrics/generate.json"):  # stand-ins for the stage's outputs
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("{}\n")
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args: str) -> str:
        done = subprocess.run([*dvc, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("init", "--no-scm", "-q")
    run("commit", "-f", "-q", "generate")
    assert "changed" not in run("status", "generate")
    unimported = tmp_path / "src/lmmops/vectors/live.py"
    assert "lmmops.vectors.live" not in stage_modules("generate")
    unimported.write_text(unimported.read_text() + "\n# an edit\n")
    assert "changed" not in run("status", "generate")
    imported = tmp_path / "src/lmmops/eval/sokoban.py"  # generate -> data.synthetic.sokoban -> eval.sokoban
    assert "lmmops.eval.sokoban" in stage_modules("generate")
    imported.write_text(imported.read_text() + "\n# an edit\n")
    assert "src/lmmops/eval/sokoban.py" in run("status", "generate")
