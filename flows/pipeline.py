"""The `pipeline` flow: every stage flow in dvc.yaml's order, as one Prefect flow run.

    python -m flows.pipeline                  # run now (temporary local Prefect server)
    python -m flows.pipeline --serve          # serve it with the nightly cron of flows/prefect.yaml
    prefect deploy --prefect-file flows/prefect.yaml   # deployments for a Prefect server + worker

Each stage is a subflow calling `lmmops.stages.run_stage`, the same function as `lmmops <stage>`.
Unlike `dvc repro` this does not skip unchanged stages: scheduled runs re-measure on purpose. Use
`make run` (dvc repro) for cached, incremental runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect import flow

from flows.stages import STAGE_FLOWS, find_root


def dvc_stage_order(root: Path) -> list[str]:
    """Stage names in the order dvc.yaml lists them (the pipeline's topological order)."""
    stages = yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"]
    unknown = [s for s in stages if s not in STAGE_FLOWS]
    if unknown:
        raise ValueError(f"dvc.yaml stages without a flow: {unknown}")
    return list(stages)


@flow(name="lmmops-pipeline", log_prints=True)
def pipeline(root: str = ".", params: str | None = None, stages: list[str] | None = None) -> dict:
    """Run the stages (default: all, in dvc.yaml order); returns each stage's metrics."""
    root_path = Path(root).resolve()
    results = {}
    for stage in stages or dvc_stage_order(root_path):
        print(f"stage {stage}")
        results[stage] = STAGE_FLOWS[stage](root=str(root_path), params=params)
    return results


if __name__ == "__main__":
    root = str(find_root())
    if "--serve" in sys.argv[1:]:
        pipeline.serve(name="nightly-pipeline", cron="0 2 * * *", parameters={"root": root})
    else:
        print(pipeline(root=root))
