"""`lmmops report`: the latest MLflow run of every stage, its status and key metrics, and where to look.

    lmmops report          a table (rich) on stdout
    lmmops report --json   the same as JSON, for scripts
    lmmops ui              the MLflow UI for this project's store on 127.0.0.1 (`make ui`)
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmmops import tracking
from lmmops.stages import STAGES

UI_URL = "http://127.0.0.1:5000"


def collect(root: Path) -> dict[str, Any]:
    runs = tracking.latest_stage_runs(root, list(STAGES))
    for r in runs:
        r["url"] = f"{UI_URL}/#/experiments/{r['experiment_id']}/runs/{r['run_id']}"
    return {
        "tracking_uri": tracking.tracking_uri(root),
        "stages": runs,
        "missing_stages": [s for s in STAGES if s not in {r["stage"] for r in runs}],
    }


def _fmt(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def print_report(root: Path, *, as_json: bool = False) -> int:
    data = collect(root)
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    table = Table(title="lmmops: latest run of each stage", show_lines=False)
    for col in ("stage", "status", "started", "time", "key metrics", "run"):
        table.add_column(col, overflow="fold")
    for r in data["stages"]:
        started = dt.datetime.fromtimestamp(r["start_time_ms"] / 1000).strftime("%Y-%m-%d %H:%M")
        metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items())
        status = r["status"] if r["status"] != "FAILED" else "[red]FAILED[/red]"
        table.add_row(r["stage"], status, started, f"{r['duration_s']:.1f}s", metrics, r["run_id"][:12])
    console.print(table)
    if data["missing_stages"]:
        console.print(f"no runs yet for: {', '.join(data['missing_stages'])}")
    if data["stages"]:
        latest = data["stages"][-1]
        dirty = " (dirty)" if latest["git_dirty"] == "true" else ""
        console.print(
            f"code {latest['git_commit'][:12]}{dirty}, data (DVC md5) {latest['dvc_data_md5']}; "
            f"store {data['tracking_uri']}"
        )
    console.print(f"Browse: `make ui`, then {UI_URL}")
    return 0


def serve_ui(root: Path, *, port: int = 5000) -> int:
    """Run `mlflow ui` for this project's store, bound to loopback only."""
    uri = tracking.tracking_uri(root)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    return subprocess.call(cmd)
