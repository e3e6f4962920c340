"""`lmmops`: the one command line. One subcommand per pipeline stage, plus report and helpers.

    lmmops --help                 list the stages and commands
    lmmops <stage> [--params P]   run one stage with its section of params.yaml (what dvc.yaml calls)
    lmmops report [--json]        the latest run of each stage with its key metrics
    lmmops ensure-data            make data/ exist: DVC cache, then the DVC remote, then `generate`
    lmmops ui [--port N]          the MLflow UI on 127.0.0.1 for this project's store
    lmmops params-table           trainable parameters of LIVE, MimIC and LoRA for the reference models

Exit codes: 0 success, 1 a stage failed (e.g. validation found bad rows), 2 bad usage or bad params.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lmmops.config import ConfigError, load_stage_config
from lmmops.env import configure_environment, find_root
from lmmops.stages import STAGES, StageFailed, run_stage
from lmmops.storage.dvc import DvcError, ensure_data

# `lmmops.report` (mlflow, ~1.5 s) and `lmmops.vectors.params` (torch, transformers, ~5 s) are imported inside the
# commands that use them, so that `lmmops --help` and the other commands start at once; a stage's own modules
# are imported by run_stage when it runs.

EPILOG = """\
The whole pipeline: `dvc repro` (or `make run`), which calls these stage commands in dvc.yaml's order;
the same stages run as Prefect flows (flows/pipeline.py). Results: `lmmops report`, `make ui`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmmops",
        description="lmmops: reproducible ICL, in-context vectors and rule-based RL for multimodal models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", metavar="<command>", title="commands (the pipeline stages first, in dvc.yaml order)"
    )
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=f"Stage `{stage.name}`: {stage.help}.")
        p.add_argument(
            "--params", type=Path, default=None,
            help="params.yaml to read this stage's section from (default: the project's params.yaml)",
        )
    rep = sub.add_parser("report", help="table of the latest run of each stage and its key metrics")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("ensure-data", help="restore data/ from the DVC cache or remote, or generate it")
    ui = sub.add_parser("ui", help="serve the MLflow UI for this project on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    pt = sub.add_parser(
        "params-table",
        help="trainable parameters of LIVE, MimIC and LoRA for Idefics-9b, Idefics2-8b-base, Qwen2.5-VL-3B",
    )
    pt.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r (default 16)")
    pt.add_argument("--breakdown", action="store_true",
                    help="also print LoRA parameters per module group (default scope: every q/k/v/o)")
    pt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    root = find_root()
    configure_environment(root)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "botocore", "great_expectations", "prefect", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.command:
        parser.print_help()
        return 2

    try:
        if args.command in STAGES:
            params = args.params or root / "params.yaml"
            cfg = load_stage_config(args.command, params)
            metrics = run_stage(args.command, cfg, root=root)
            print(json.dumps(metrics, indent=2, sort_keys=True))
            return 0
        if args.command == "report":
            from lmmops.report import print_report

            return print_report(root, as_json=args.json)
        if args.command == "ensure-data":
            print(ensure_data(root))
            return 0
        if args.command == "ui":
            from lmmops.report import serve_ui

            return serve_ui(root, port=args.port)
        if args.command == "params-table":
            return _params_table(args.lora_rank, breakdown=args.breakdown, as_json=args.json)
    except ConfigError as exc:
        print(f"lmmops: error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"lmmops: stage {args.command} failed:\n{exc}", file=sys.stderr)
        return 1
    except DvcError as exc:
        print(f"lmmops: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


def _params_table(lora_rank: int, *, breakdown: bool, as_json: bool) -> int:
    """Print the parameter table of lmmops.vectors.params (architectures from the repo's config files)."""
    from lmmops.vectors.params import (
        CONFIG_DIR,
        REFERENCE_CONFIGS,
        build_on_meta,
        format_params_table,
        lora_breakdown,
        params_table,
        rows_as_json,
    )

    rows = params_table(lora_rank=lora_rank)
    print(rows_as_json(rows) if as_json else format_params_table(rows))
    if breakdown and not as_json:
        for name, file in REFERENCE_CONFIGS.items():
            print(f"\n{name}: LoRA r={lora_rank}, every q/k/v/o (the default scope), by module group")
            for group, count in lora_breakdown(build_on_meta(CONFIG_DIR / file), rank=lora_rank).items():
                print(f"  {group:<60} {count:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
