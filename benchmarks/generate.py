"""Benchmark: wall time of the synthetic data generators (and validation) at params.yaml's sizes.

    .venv/bin/python benchmarks/generate.py [params.yaml]

Generates into a temporary directory (never into data/), twice, and checks that both trees are
byte-identical; then runs the Great Expectations validation over it. Prints a table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from lmmops.config import ValidateConfig, load_stage_config
from lmmops.data import generate_all, validate_all
from lmmops.env import configure_environment, find_root


def tree_md5(root: Path) -> str:
    h = hashlib.md5()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    root = find_root()
    configure_environment(root)
    params = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "params.yaml"
    cfg = load_stage_config("generate", params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        digests = []
        for attempt in (1, 2):
            out = f"gen{attempt}"
            t0 = time.perf_counter()
            summary = generate_all(dataclasses.replace(cfg, out_dir=out), Path(tmp), progress=False)
            rows.append((f"generate (run {attempt})", time.perf_counter() - t0, summary["files"]))
            digests.append(tree_md5(Path(tmp) / out))
        t0 = time.perf_counter()
        report = validate_all(ValidateConfig(data_dir="gen1"), Path(tmp))
        rows.append(("validate (GE suites)", time.perf_counter() - t0, report.rows))
    print(f"{'step':<24} {'seconds':>8} {'files/rows':>11}")
    print("-" * 45)
    for name, secs, n in rows:
        print(f"{name:<24} {secs:>8.2f} {n:>11}")
    print(f"\nbyte-identical across runs: {digests[0] == digests[1]}; validation passed: {report.success}")


if __name__ == "__main__":
    main()
