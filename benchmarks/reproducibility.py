"""Benchmark: which run-to-run differences change the trained base model's bits (thread count, CPU kernels).

Run: .venv/bin/python benchmarks/reproducibility.py [--steps 40] [--data DIR]

Trains the default base model (`lmmops.models.bootstrap.train`, params.yaml's bootstrap section with fewer steps
and fewer generated reasoning rows) once per variant, each in a fresh process, and prints per variant the final
training loss, the MD5 of every trained weight and the largest absolute weight difference to the first run:

  same settings, twice    bitwise determinism on one machine (same CPU, same threads, same library versions);
  threads=1               another intra-op thread count: reductions are split and summed in another order;
  ATEN_CPU_CAPABILITY=... PyTorch's own vectorised kernels (softmax, norms, reductions) forced to AVX2 or to
                          plain C++ instead of the widest ISA the CPU has (AVX-512 on this kind of Intel machine;
                          an AMD EPYC without AVX-512 picks AVX2 on its own);
  MKL_ENABLE_INSTRUCTIONS=AVX2  the matrix multiplies' oneMKL code path forced to AVX2.
A variant whose hash differs from the first run's trains a different model from the same data and seed: every
metric downstream then differs by more than rounding (see README, "Reproducibility").
Without --data it generates params.yaml's data into a temporary directory first (~15 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: list[tuple[str, dict[str, str], int | None]] = [
    ("params.yaml settings", {}, None),
    ("same settings, again", {}, None),
    ("threads=1", {}, 1),
    ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, None),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, None),
    ("MKL_ENABLE_INSTRUCTIONS=AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, None),
]


def worker(data_dir: Path, steps: int, threads: int | None, out: Path) -> None:
    """Train `steps` steps in this process and write the loss and the weights' digests to `out`."""
    import torch

    from lmmops.config import load_stage_config
    from lmmops.models.bootstrap import train

    cfg = load_stage_config("bootstrap", ROOT / "params.yaml")
    cfg = dataclasses.replace(cfg, steps=steps, extra_reasoning_rows=2000, log_every=steps,
                              **({"threads": threads} if threads else {}))
    result = train(cfg, data_dir, None, progress=False)
    state = {k: v.detach().float().cpu() for k, v in result.model.state_dict().items()}
    digest = hashlib.md5()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(state[k].numpy().tobytes())
    torch.save(state, out.with_suffix(".pt"))
    out.write_text(json.dumps({"loss": result.history[-1]["loss"], "md5": digest.hexdigest(),
                               "threads": torch.get_num_threads(),
                               "capability": torch.backends.cpu.get_cpu_capability()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="bootstrap steps per variant")
    parser.add_argument("--data", type=Path, default=None, help="a generated data directory (default: generate)")
    parser.add_argument("--worker", nargs=4, metavar=("DATA", "STEPS", "THREADS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, steps, threads, out = args.worker
        worker(Path(data), int(steps), int(threads) or None, Path(out))
        return

    import torch

    with tempfile.TemporaryDirectory(prefix="lmmops-repro-") as tmp:
        data_dir = args.data
        if data_dir is None:
            from lmmops.config import load_stage_config
            from lmmops.data.generate import generate_all

            generate_all(load_stage_config("generate", ROOT / "params.yaml"), Path(tmp), progress=False)
            data_dir = Path(tmp) / "data"
        rows = []
        for i, (name, env, threads) in enumerate(VARIANTS):
            out = Path(tmp) / f"variant{i}.json"
            cmd = [sys.executable, __file__, "--worker", str(data_dir), str(args.steps), str(threads or 0), str(out)]
            print(f"[{i + 1}/{len(VARIANTS)}] {name} ...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, **env}, cwd=ROOT)
            rows.append((name, json.loads(out.read_text()), torch.load(out.with_suffix(".pt"))))
        first = rows[0][2]
        print(f"\nbootstrap, {args.steps} steps, torch {torch.__version__}, {os.cpu_count()} CPUs")
        header = f"{'variant':30} {'threads':>7} {'kernels':>8} {'final loss':>12} {'weights md5':>34} {'max |dw|':>9}"
        print(header)
        print("-" * len(header))
        for name, res, state in rows:
            diff = max(float((state[k] - first[k]).abs().max()) for k in first)
            print(f"{name:30} {res['threads']:>7} {res['capability']:>8} {res['loss']:>12.6f} {res['md5']:>34} "
                  f"{diff:>9.2e}")


if __name__ == "__main__":
    main()
