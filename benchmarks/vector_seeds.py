"""Benchmark: seed spread of the in-context vector results: live, mimic and vector-baselines on several seeds.

Run: .venv/bin/python benchmarks/vector_seeds.py [--seeds 0 1 2] [--stages live mimic vector-baselines]
                                                [--out benchmarks/results/vector_seeds.json]

Needs the outputs of `make run` (data/ and models/base). For every seed it runs the real stages (`lmmops live`,
`lmmops mimic`, `lmmops vector-baselines`, exactly as dvc.yaml does) in a scratch project that links to this
project's data/ (and copies its models/base), with params.yaml's sections except `seed` (and its own MLflow store,
checkpoints and ICL reference cache, so nothing of the project is touched). The seed draws the vectors'
initialisation, the teacher's demonstrations, the baselines' prompts and LoRA's initialisation, and the
16-shot ICL reference's demonstrations; data and base model are fixed. It prints, per task pool, the mean and
the sample standard deviation over seeds of each method's test accuracy, with and without near-duplicates
where the stage reports both, and writes every seed's numbers to --out.

About 5-7 minutes per seed on 2 CPU cores with the default sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("live", "mimic", "vector-baselines")
# (label, stage, metric family) of the test accuracies to tabulate; the families' keys end in /<pool> or /mean
COLUMNS = (
    ("zero-shot", "live", "zero_shot_acc"),
    ("16-shot ICL", "live", "icl_acc"),
    ("LIVE", "live", "test_acc"),
    ("MimIC", "mimic", "test_acc"),
    ("LoRA", "vector-baselines", "test_acc/lora"),
    ("task vector", "vector-baselines", "test_acc/task_vector"),
    ("function vector", "vector-baselines", "test_acc/function_vector"),
    ("ICV", "vector-baselines", "test_acc/icv"),
)


def run_seed(seed: int, stages: list[str], scratch: Path) -> dict[str, dict[str, float]]:
    """Run `stages` with every seed key set to `seed` in a scratch project; return {stage: metrics}."""
    project = scratch / f"seed{seed}"
    (project / "models").mkdir(parents=True, exist_ok=True)
    if not (project / "data").exists():
        (project / "data").symlink_to(ROOT / "data")
    if not (project / "models" / "base").exists():  # a copy: MLflow's artifact logging does not follow links
        shutil.copytree(ROOT / "models" / "base", project / "models" / "base")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in stages:
        params[stage]["seed"] = seed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    out: dict[str, dict[str, float]] = {}
    for stage in stages:
        started = time.perf_counter()
        print(f"seed {seed}: lmmops {stage} ...", file=sys.stderr, flush=True)
        subprocess.run([str(Path(sys.executable).parent / "lmmops"), stage], cwd=project, env=env, check=True,
                       stdout=sys.stderr)  # the stage prints its metrics: keep stdout for the table
        out[stage] = json.loads((project / "metrics" / f"{stage}.json").read_text())
        print(f"seed {seed}: {stage} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def table(results: dict[int, dict[str, dict[str, float]]], suffix: str) -> str:
    """Markdown table: one row per pool (and the mean), 'mean ± sd' per method over the seeds."""
    first = next(iter(results.values()))
    live = first.get("live") or first.get("mimic") or {}
    pools = sorted(k.split("/", 1)[1] for k in live if k.startswith("zero_shot_acc/") and not k.endswith("/mean"))
    cols = [(label, stage, family) for label, stage, family in COLUMNS if stage in first]
    lines = ["| pool | " + " | ".join(label for label, _, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for pool in [*pools, "mean"]:
        cells = []
        for _, stage, family in cols:
            head, _, rest = family.partition("/")
            key = f"{head}{suffix}/{rest + '/' if rest else ''}{pool}"
            values = [r[stage][key] for r in results.values() if key in r.get(stage, {})]
            m, sd = mean_std([100 * v for v in values]) if values else (0.0, 0.0)
            cells.append(f"{m:.1f} ± {sd:.1f}" if values else "-")
        lines.append(f"| {pool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vector_seeds.json")
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of an earlier --out file")
    args = parser.parse_args()
    if args.from_json:
        results = {int(s): r for s, r in json.loads(args.from_json.read_text()).items()}
        args.seeds = sorted(results)
        print_tables(results, args.seeds)
        return
    for needed in ("data", "models/base"):
        if not (ROOT / needed).exists():
            sys.exit(f"{ROOT / needed} is missing: run `make run` first")
    if "mimic" in args.stages and "live" not in args.stages:
        sys.exit("mimic's table columns read live's zero-shot and ICL numbers: include live")
    with tempfile.TemporaryDirectory(prefix="lmmops-seeds-") as scratch:
        results = {seed: run_seed(seed, args.stages, Path(scratch)) for seed in args.seeds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(s): r for s, r in results.items()}, indent=1, sort_keys=True) + "\n")
    tmp.replace(args.out)
    print_tables(results, args.seeds)
    print(f"\nper-seed metrics: {args.out}")


def print_tables(results: dict[int, dict[str, dict[str, float]]], seeds: list[int]) -> None:
    print(f"\nTest accuracy (%), mean ± sample standard deviation over seeds {seeds}")
    print(table(results, ""))
    if any("test_acc_nodup/mean" in r.get("live", {}) for r in results.values()):
        print(f"\nWithout near-duplicates, seeds {seeds}")
        print(table(results, "_nodup"))


if __name__ == "__main__":
    main()
