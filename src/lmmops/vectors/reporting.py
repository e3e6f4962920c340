"""Metrics and results tables of the in-context vector stages (live, mimic, vector-baselines).

  - `stage_metrics(training, test, ...)`: the flat, deterministic metrics of live/mimic; `accuracy_metrics` gives
    their test accuracies (and gaps to ICL) for all test items, and again without the near-duplicate test items
    (keys <family>_nodup/<pool>: the same per-item scores, filtered; real data has none, and then both are equal);
  - `results_markdown(caption, header, rows, nodup=..., notes=...)`: the one table layout of every vector stage's
    results.md (an accuracy table, then the same without near-duplicates under `NODUP_CAPTION`), filled by
    `vector_stage_markdown` (live/mimic: zero-shot, k-shot ICL, the method, val, gap ± SE per pool) and
    `baselines_markdown` (vector-baselines: one column per method);
  - `pool_means`: means over the pools that have a value (a pool left without items stays out).

Run: `python -m pytest tests/vectors/test_reporting.py tests/vectors/test_icl_reference.py -q`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lmmops.eval.analysis import mean_without, paired_gap, split_by_mask
from lmmops.vectors.evaluation import TestResult

NODUP = "_nodup"  # metric family suffix: the same test accuracy without the near-duplicates of train items
NODUP_CAPTION = ("\nWithout near-duplicates (the test items that near-copy a train item by design, the synthetic "
                 "generator's near_duplicate_share, left out; the same answers and scores as above; real data has "
                 "none):\n\n")
LABELS = {"live": "LIVE", "mimic": "MimIC"}


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def pool_means(per_pool: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> dict[str, float]:
    """{column: mean over the pools that have it} of {pool: {column: value}}; a column no pool has is left out."""
    out = {}
    for c in columns:
        values = [values_of_pool[c] for values_of_pool in per_pool.values() if c in values_of_pool]
        if values:
            out[c] = sum(values) / len(values)
    return out


# ----------------------------------------------------------------------------------------------------
# live / mimic metrics


def accuracy_metrics(test: TestResult, *, without_near_duplicates: bool = False) -> dict[str, float]:
    """Test accuracies of the vectors, zero-shot and ICL per pool and their means over the pools, the gap ICL minus
    vectors on the same items (and its paired standard error), and the item counts.

    Keys: test_acc, zero_shot_acc, icl_acc, gap_to_icl, gap_to_icl_se /<pool> and /mean, gain_over_zero_shot/mean,
    test_items/<pool>. `without_near_duplicates`: the same with the near-duplicate test items left out (keys
    <family>_nodup/...), from the same per-item scores, no second model pass; a pool left without items (all of
    them near-duplicates) gets only its count (0) and stays out of the means. With every item, the per-pool
    accuracies are the scored ones (`evaluate_vectors` sums them per question type).
    (No standard error for a pool of one item: metrics files and MLflow get no NaN.)
    """
    sfx = NODUP if without_near_duplicates else ""
    families = {"test_acc": "vectors", "zero_shot_acc": "zero-shot", "icl_acc": "icl"}
    scored = {"test_acc": test.vector_acc, "zero_shot_acc": test.zero_shot_acc, "icl_acc": test.icl_acc}
    m: dict[str, float] = {}
    per_pool: dict[str, dict[str, float]] = {}
    ses: list[float] = []
    for pool, scores in test.item_acc.items():
        drop = (test.near_duplicate.get(pool) if without_near_duplicates else None) or [False] * len(scores["vectors"])
        n = sum(not d for d in drop)
        m[f"test_items{sfx}/{pool}"] = float(n)
        if n == 0:
            continue
        per_pool[pool] = {name: float(mean_without(scores[which], drop)[0] if without_near_duplicates
                                      else scored[name][pool]) for name, which in families.items()}
        for name, value in per_pool[pool].items():
            m[f"{name}{sfx}/{pool}"] = value
        gap, se = paired_gap(split_by_mask(scores["icl"], drop)[1], split_by_mask(scores["vectors"], drop)[1])
        m[f"gap_to_icl{sfx}/{pool}"] = float(gap)
        ses.append(se)
        if math.isfinite(se):
            m[f"gap_to_icl_se{sfx}/{pool}"] = float(se)
    if not per_pool:
        return m
    for name, value in pool_means(per_pool, list(families)).items():
        m[f"{name}{sfx}/mean"] = float(value)
    # gap_to_icl: how far the vectors stay below k-shot ICL (the target: <= 0.05);
    # gain_over_zero_shot: how far they lift the plain model (target: >= 0.30).
    m[f"gap_to_icl{sfx}/mean"] = m[f"icl_acc{sfx}/mean"] - m[f"test_acc{sfx}/mean"]
    if all(math.isfinite(se) for se in ses):  # disjoint pools: the mean's variance adds theirs
        m[f"gap_to_icl_se{sfx}/mean"] = float(sum(se**2 for se in ses) ** 0.5 / len(ses))
    m[f"gain_over_zero_shot{sfx}/mean"] = m[f"test_acc{sfx}/mean"] - m[f"zero_shot_acc{sfx}/mean"]
    return m


def stage_metrics(
    training: Mapping[str, Any], test: TestResult, *, trainable_params: int, shots: int, icl_draws: int = 1
) -> dict[str, float]:
    """The live/mimic stage's flat metrics (deterministic: no timings). Pool keys keep their names (icl/colour/en).

    `training`: {pool: lmmops.vectors.pool_training.PoolTraining} (its val_acc and step are read)."""
    m = accuracy_metrics(test)
    val = {p: t.val_acc for p, t in training.items()}
    for pool, acc in val.items():
        m[f"val_acc/{pool}"] = float(acc)
    m["val_acc/mean"] = mean(list(val.values()))
    for pool, t in training.items():
        m[f"selected_step/{pool}"] = float(t.step)
    m["trainable_params"] = float(trainable_params)
    m["pools"] = float(len(training))
    m["shots"] = float(shots)
    m["icl_draws"] = float(icl_draws)
    m.update(accuracy_metrics(test, without_near_duplicates=True))
    return m


# ----------------------------------------------------------------------------------------------------
# results tables


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (no trailing newline); an empty cell is written as a single space."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["|" + "|".join(f" {c} " if c else " " for c in row) + "|" for row in rows]
    return "\n".join(lines)


def results_markdown(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]], *,
                     nodup: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None,
                     notes: Sequence[str] = ()) -> str:
    """results.md of a vector stage: `caption`, the accuracy table; with `nodup` (header, rows) the same table
    without the near-duplicate test items under `NODUP_CAPTION`; then each note as a paragraph."""
    text = caption + "\n\n" + markdown_table(header, rows) + "\n"
    if nodup is not None:
        text += NODUP_CAPTION + markdown_table(*nodup) + "\n"
    return text + "".join(f"\n{n}\n" for n in notes)


def vector_stage_markdown(method: str, metrics: Mapping[str, float], latency: Mapping[str, float], shots: int) -> str:
    """live/mimic: test accuracy (%) per pool: zero-shot, k-shot ICL, the method, its val accuracy (and the gap
    ICL minus the method ± SE, the item count); the mean; params and latency rows; the table without
    near-duplicates (when the metrics have it); `target_notes`."""
    label = LABELS.get(method, method)
    pools = [k.split("/", 1)[1] for k in metrics if k.startswith("test_acc/") and not k.endswith("/mean")]
    draws = int(metrics.get("icl_draws", 1))
    icl_col = f"{shots}-shot ICL" + (f" (mean of {draws} demo draws)" if draws > 1 else "")
    cols = [("zero-shot", "zero_shot_acc"), (icl_col, "icl_acc"), (label, "test_acc"),
            (f"{label} val (selection)", "val_acc")]
    header = ["pool", *(c for c, _ in cols)]
    gaps = any(k.startswith("gap_to_icl_se/") for k in metrics)
    if gaps:
        header += [f"ICL - {label} (± SE)", "test items"]
    rows = []
    for pool in [*pools, "mean"]:
        cells = [f"{100 * metrics.get(f'{key}/{pool}', float('nan')):.1f}" for _, key in cols]
        if gaps:
            gap = metrics.get(f"gap_to_icl/{pool}", float("nan"))
            se = metrics.get(f"gap_to_icl_se/{pool}", float("nan"))
            n = (sum(metrics.get(f"test_items/{p}", 0) for p in pools) if pool == "mean"
                 else metrics.get(f"test_items/{pool}", float("nan")))
            cells += [f"{100 * gap:+.1f} ± {100 * se:.1f}", f"{n:.0f}"]
        rows.append(["**mean**" if pool == "mean" else pool, *cells])
    pad = ["", ""] if gaps else []
    rows.append(["trainable params", "0", "0", f"{int(metrics['trainable_params']):,}", "", *pad])
    rows.append(["latency vs zero-shot", "1.00x", f"{latency.get('icl', float('nan')):.2f}x",
                 f"{latency.get('vectors', float('nan')):.2f}x", "", *pad])
    caption = (f"Test accuracy (%, VQA accuracy) of {label} per task pool; the vector set of each pool was selected "
               f"on the val split, the test split was scored once. ICL - {label}: the gap on the same test items and "
               f"its paired standard error.")
    return results_markdown(caption, header, rows, nodup=_nodup_table(metrics, pools, icl_col, label),
                            notes=target_notes(metrics, pools, shots, label))


def _nodup_table(metrics: Mapping[str, float], pools: Sequence[str], icl_col: str,
                 label: str) -> tuple[list[str], list[list[str]]] | None:
    """The live/mimic accuracy table without the near-duplicate test items (`accuracy_metrics`); None when the
    metrics have none of its keys (an older run)."""
    if not any(k.startswith(f"test_items{NODUP}/") for k in metrics):
        return None

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.1f}" if key in metrics else "-"

    cols = [("zero-shot", "zero_shot_acc"), (icl_col, "icl_acc"), (label, "test_acc")]
    header = ["pool", *(c for c, _ in cols), f"ICL - {label} (± SE)", "test items (of all)"]
    rows = []
    for pool in [*pools, "mean"]:
        cells = [pct(f"{key}{NODUP}/{pool}") for _, key in cols]
        gap, se = f"gap_to_icl{NODUP}/{pool}", f"gap_to_icl_se{NODUP}/{pool}"
        cells.append("-" if gap not in metrics else f"{100 * metrics[gap]:+.1f}"
                     + (f" ± {100 * metrics[se]:.1f}" if se in metrics else ""))
        ps = pools if pool == "mean" else [pool]
        n = sum(metrics.get(f"test_items{NODUP}/{p}", 0) for p in ps)
        cells.append(f"{n:.0f} (of {sum(metrics.get(f'test_items/{p}', 0) for p in ps):.0f})")
        rows.append(["**mean**" if pool == "mean" else pool, *cells])
    return header, rows


def target_notes(metrics: Mapping[str, float], pools: Sequence[str], shots: int, label: str,
                 gain_target: float = 0.30, gap_target: float = 0.05) -> list[str]:
    """Why a per-pool target cannot be read off the table: the teacher's own gain, and the test size.

    A vector set that matches its k-shot teacher gains what the teacher gains over zero-shot; where the teacher
    itself gains less than `gain_target`, reaching it would take beating the teacher. And a pool whose single
    test item moves its accuracy by more than `gap_target` cannot show a gap within that target unless the two
    get exactly the same items right.
    """
    notes = []
    short = [(p, metrics[f"icl_acc/{p}"] - metrics[f"zero_shot_acc/{p}"]) for p in pools
             if f"icl_acc/{p}" in metrics and f"zero_shot_acc/{p}" in metrics
             and metrics[f"icl_acc/{p}"] - metrics[f"zero_shot_acc/{p}"] < gain_target]
    if short:
        listed = ", ".join(f"{p} ({100 * g:+.1f})" for p, g in short)
        notes.append(f"{shots}-shot ICL itself gains less than {100 * gain_target:.0f} points over zero-shot on: "
                     f"{listed}; there {label} reaches the +{100 * gain_target:.0f} target only by beating its "
                     f"teacher.")
    small = [p for p in pools if 0 < metrics.get(f"test_items/{p}", 0) < 1 / gap_target]
    if small:
        notes.append(f"Pools with fewer than {1 / gap_target:.0f} test items ({', '.join(small)}): one item moves "
                     f"accuracy by more than {100 * gap_target:.0f} points, so a gap within that target shows only "
                     f"when {label} and ICL get the same items right; read the standard errors.")
    return notes


# ----------------------------------------------------------------------------------------------------
# vector-baselines table


def baselines_markdown(table: Mapping[str, Mapping[str, float]], columns: Sequence[str], params: Mapping[str, int],
                       latency: Mapping[str, float], nodup: Mapping[str, Mapping[str, float]] | None = None,
                       items: Mapping[str, tuple[int, int]] | None = None) -> str:
    """vector-baselines: test accuracy per pool (rows) and method (columns), the mean, trainable parameters and
    latency; with `nodup` ({pool: {method: accuracy}} without the near-duplicate test items) and `items` ({pool:
    (test items without near-duplicates, all test items)}), the table of the accuracies without them."""
    mean_all = pool_means(table, columns)
    rows = [[pool, *(f"{100 * accs[c]:.1f}" for c in columns)] for pool, accs in table.items()]
    rows.append(["**mean**", *(f"**{100 * mean_all[c]:.1f}**" for c in columns)])
    rows.append(["trainable params", *(f"{params.get(c, 0):,}" for c in columns)])
    rows.append(["latency vs zero-shot", *(f"{latency.get(c, 1.0):.2f}x" for c in columns)])
    caption = "Test accuracy (%, VQA accuracy) of each baseline per task pool; every choice made on the val split."
    if nodup is None:
        return results_markdown(caption, ["pool", *columns], rows)
    counts = items or {}
    mean_nodup = pool_means(nodup, columns)
    nodup_rows = [[pool, *(f"{100 * accs[c]:.1f}" if c in accs else "-" for c in columns),
                   "{} (of {})".format(*counts.get(pool, ("-", "-")))] for pool, accs in nodup.items()]
    nodup_rows.append(["**mean**", *(f"**{100 * mean_nodup[c]:.1f}**" if c in mean_nodup else "-" for c in columns),
                       f"{sum(n for n, _ in counts.values())} (of {sum(t for _, t in counts.values())})"])
    return results_markdown(caption, ["pool", *columns], rows,
                            nodup=(["pool", *columns, "test items (of all)"], nodup_rows))
