"""`lmmops report`: the latest MLflow run of every stage, its status and key metrics, and where to look.

    lmmops report          a table (rich) on stdout; after it, once live / mimic / vector-baselines have run, the
                           "in-context vectors" table: method (zero-shot, k-shot ICL, LIVE, MimIC, baselines),
                           trainable params, mean test accuracy over task pools (also without the near-duplicate
                           test items: near-copies of a train item), latency per query vs zero-shot
    lmmops report --json   the same as JSON, for scripts (the vectors table under "vectors", with per-pool accuracies
                           and, for LIVE and MimIC, the per-pool gap to ICL with its paired standard error; each
                           also without the near-duplicates: test_acc_nodup, test_acc_nodup_per_pool,
                           gap_to_icl_nodup_per_pool; the latest generate run's counts of held-out items that repeat a
                           train item under "duplicates": {"duplicates/<kind>/<domain>/<split>": n}, null before
                           generate has run)
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
        "vectors": vector_table(runs),
        "duplicates": duplicate_table(runs),
    }


def duplicate_table(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """The latest generate run's duplicates/<kind>/<domain>/<split> metrics (lmmops.data.duplicates): not among its
    key metrics, so read from the full run; None when generate has not run."""
    generate = next((r for r in runs if r["stage"] == "generate"), None)
    if generate is None:
        return None
    metrics = tracking.run_info(generate["run_id"])["metrics"]
    return {k: v for k, v in sorted(metrics.items()) if k.startswith("duplicates/")}


# ----------------------------------------------------------------------------------------------------
# the in-context vectors table (issue 6): zero-shot, k-shot ICL, LIVE, MimIC and the vector baselines

VECTOR_STAGES = {"live": "LIVE", "mimic": "MimIC"}
BASELINE_STAGE = "vector-baselines"
BASELINE_LABELS = {"lora": "LoRA (r 16, q/k/v/o)", "task_vector": "task vector", "function_vector": "function vector",
                   "icv": "ICV"}


def _per_pool(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """{pool: value} of the metrics named `<prefix><pool>` (pool names may hold "/"), without the mean."""
    return {k[len(prefix):]: v for k, v in sorted(metrics.items()) if k.startswith(prefix) and k != f"{prefix}mean"}


def _vector_row(method: str, stage: str, params: float | None, acc: float | None, latency: float | None,
                per_pool: dict[str, float], metrics: dict[str, float] | None = None, key: str = "") -> dict[str, Any]:
    """One method's row; with `metrics` and `key` (its test accuracy family, e.g. "icl_acc/" or "test_acc/lora/"),
    also test_acc_nodup and test_acc_nodup_per_pool: the same without the near-duplicate test items (metrics
    <family>_nodup/...; None and {} for a run older than them)."""
    row = {"method": method, "stage": stage, "trainable_params": params, "test_acc": acc, "latency_rel": latency,
           "test_acc_per_pool": per_pool, "test_acc_nodup": None, "test_acc_nodup_per_pool": {}}
    if metrics is not None and key:
        family, _, rest = key.partition("/")
        nodup = f"{family}_nodup/{rest}"
        row["test_acc_nodup"] = metrics.get(f"{nodup}mean")
        row["test_acc_nodup_per_pool"] = _per_pool(metrics, nodup)
    return row


def vector_table(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Rows (method, trainable params, mean test accuracy over task pools, latency per query relative to
    zero-shot, and the per-pool accuracies) from the latest finished live / mimic / vector-baselines runs; None
    when none has run. Zero-shot and k-shot ICL come from the live (else mimic) run, which measures them on the
    same test items; baselines from the vector-baselines metrics test_acc/<b>/mean, trainable_params/<b>,
    latency_rel/<b>."""
    wanted = (*VECTOR_STAGES, BASELINE_STAGE)
    full = {r["stage"]: tracking.run_info(r["run_id"])["metrics"] for r in runs
            if r["stage"] in wanted and r["status"] == "FINISHED"}
    rows: list[dict[str, Any]] = []
    ref_stage = next((s for s in VECTOR_STAGES if s in full), None)
    if ref_stage is not None:
        ref = full[ref_stage]
        rows.append(_vector_row("zero-shot", ref_stage, 0, ref.get("zero_shot_acc/mean"), 1.0,
                                _per_pool(ref, "zero_shot_acc/"), ref, "zero_shot_acc/"))
        icl = _vector_row(f"{int(ref.get('shots', 0))}-shot ICL", ref_stage, 0, ref.get("icl_acc/mean"),
                          ref.get("icl_latency_rel"), _per_pool(ref, "icl_acc/"), ref, "icl_acc/")
        icl["icl_draws"] = int(ref.get("icl_draws", 1))  # demo draws per test query its accuracy averages
        rows.append(icl)
    elif BASELINE_STAGE in full and "test_acc/zero-shot/mean" in full[BASELINE_STAGE]:
        ref = full[BASELINE_STAGE]
        rows.append(_vector_row("zero-shot", BASELINE_STAGE, 0, ref["test_acc/zero-shot/mean"], 1.0,
                                _per_pool(ref, "test_acc/zero-shot/"), ref, "test_acc/zero-shot/"))
    for stage, label in VECTOR_STAGES.items():
        if stage in full:
            m = full[stage]
            row = _vector_row(label, stage, m.get("trainable_params"), m.get("test_acc/mean"),
                              m.get("latency_rel"), _per_pool(m, "test_acc/"), m, "test_acc/")
            # ICL minus the method on the same test items, its paired standard error and the item count; and the
            # same without the near-duplicate test items
            for suffix in ("", "_nodup"):
                se = _per_pool(m, f"gap_to_icl_se{suffix}/")
                row[f"gap_to_icl{suffix}_per_pool"] = {
                    p: {"gap": g, "se": se.get(p), "test_items": m.get(f"test_items{suffix}/{p}")}
                    for p, g in _per_pool(m, f"gap_to_icl{suffix}/").items()}
            rows.append(row)
    if BASELINE_STAGE in full:
        m = full[BASELINE_STAGE]
        found = {k.split("/")[1] for k in m if k.startswith("test_acc/") and k.endswith("/mean")} - {"zero-shot"}
        for b in [*(b for b in BASELINE_LABELS if b in found), *sorted(found - set(BASELINE_LABELS))]:
            rows.append(_vector_row(BASELINE_LABELS.get(b, b), BASELINE_STAGE, m.get(f"trainable_params/{b}"),
                                    m.get(f"test_acc/{b}/mean"), m.get(f"latency_rel/{b}"),
                                    _per_pool(m, f"test_acc/{b}/"), m, f"test_acc/{b}/"))
    if not rows:
        return None
    pools = sorted({p for r in rows for p in r["test_acc_per_pool"]})
    return {"rows": rows, "pools": pools}


def _print_vector_table(console: Any, vectors: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="in-context vectors (test split, mean over task pools)")
    for col in ("method", "trainable params", "test accuracy", "without near-duplicates", "latency vs zero-shot",
                "stage"):
        table.add_column(col, justify="left" if col in ("method", "stage") else "right")
    for r in vectors["rows"]:
        params = "-" if r["trainable_params"] is None else f"{int(r['trainable_params']):,}"
        acc = "-" if r["test_acc"] is None else f"{100 * r['test_acc']:.1f}%"
        nodup = "-" if r.get("test_acc_nodup") is None else f"{100 * r['test_acc_nodup']:.1f}%"
        latency = "-" if r["latency_rel"] is None else f"{r['latency_rel']:.2f}x"
        table.add_row(r["method"], params, acc, nodup, latency, r["stage"])
    console.print(table)


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
    if data["vectors"]:
        _print_vector_table(console, data["vectors"])
    repeated = {k.removeprefix("duplicates/"): _fmt(v) for k, v in (data["duplicates"] or {}).items() if v}
    if repeated:
        console.print("held-out items that repeat a train item (generate): "
                      + "  ".join(f"{k}={v}" for k, v in repeated.items()))
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
