"""One Prefect flow per pipeline stage, each a thin wrapper over `lmmops.stages.run_stage`.

    python -m flows.stages generate          # run one stage as a Prefect flow
    python -m flows.stages --list

With no PREFECT_API_URL configured, Prefect starts a temporary local server whose home is
`<repo>/.prefect` (set by lmmops.env). A task builds the stage's typed config from params.yaml and
calls the same function as `lmmops <stage>` and dvc.yaml: one code path. This module imports no
torch (the stage implementations are imported inside the task).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lmmops.env import configure_environment, find_root

configure_environment(find_root(Path(__file__).parent))

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from lmmops.stages import STAGES  # noqa: E402


@task(name="run-stage", cache_policy=NO_CACHE)
def run_stage_task(stage: str, root: str, params: str | None = None) -> dict[str, float]:
    """Build the stage's config from params.yaml and run it (MLflow run, metrics file, DVC add...)."""
    from lmmops.config import load_stage_config
    from lmmops.stages import run_stage

    root_path = Path(root).resolve()
    cfg = load_stage_config(stage, Path(params) if params else root_path / "params.yaml")
    return run_stage(stage, cfg, root=root_path)


def _make_stage_flow(stage: str) -> Any:
    def stage_flow(root: str = ".", params: str | None = None) -> dict[str, float]:
        return run_stage_task(stage, str(Path(root).resolve()), params)

    stage_flow.__name__ = f"{stage.replace('-', '_')}_flow"
    stage_flow.__doc__ = f"Stage `{stage}`: {STAGES[stage].help}."
    return flow(name=f"lmmops-{stage}", log_prints=True)(stage_flow)


STAGE_FLOWS = {name: _make_stage_flow(name) for name in STAGES}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print("usage: python -m flows.stages <stage> [params.yaml]\nstages: " + ", ".join(STAGE_FLOWS))
        return 0
    stage, *rest = argv
    if stage not in STAGE_FLOWS:
        print(f"unknown stage {stage!r}; stages: {', '.join(STAGE_FLOWS)}", file=sys.stderr)
        return 2
    print(STAGE_FLOWS[stage](root=str(find_root()), params=rest[0] if rest else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
