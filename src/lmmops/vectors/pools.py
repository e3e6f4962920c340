"""Task pools: the VQA items of a split grouped as the in-context vector stages train and report them.

A pool is an ICL task family of the data (lmmops.data.icl_tasks order), or "vqa": the ordinary, non-ICL
questions. The live, mimic, icl-reference and vector-baselines stages all group their items here.

Use:
    pools = task_pools(items)                                       # {pool: items}, every non-empty pool
    pools = task_pools(items, ("icl/colour/en", "vqa"), where="vector-baselines.tasks")   # these, in this order
    per_split = select_pools(splits, tasks=(), shots=16, where="live.tasks")   # {pool: {split: items}}, checked

Run: `python -m pytest tests/vectors/test_stages.py -q -k tasks`.
Departure from the papers: one pool per synthetic task family (the papers train one vector set per dataset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmmops.data.icl_tasks import group_by_task
from lmmops.data.schemas import VQAItem

VQA_POOL = "vqa"  # the ordinary (non-ICL) VQA questions as one pool
TEACHER_STRATEGY = "RS-within-task"  # teacher demos: random, with replacement, from the query's own pool
SPLITS = ("train", "val", "test")


def task_pools(items: Sequence[VQAItem], names: Sequence[str] = (), *,
               where: str = "tasks") -> dict[str, list[VQAItem]]:
    """{pool: items}: the ICL task families present (lmmops.data.icl_tasks order), then "vqa" when present.

    With `names`, exactly those pools in that order (a pool without items in `items` is an empty list; "vqa" is
    always known); an unknown name raises ValueError naming `where` (e.g. "vector-baselines.tasks")."""
    pools = group_by_task(items)
    pools[VQA_POOL] = [it for it in items if not it.is_icl]
    if not names:
        return {name: pool for name, pool in pools.items() if pool}
    unknown = [n for n in names if n not in pools]
    if unknown:
        raise ValueError(f"{where}: unknown pool {unknown[0]!r}; pools: {', '.join(pools)}")
    return {name: pools[name] for name in names}


def select_pools(
    splits: Mapping[str, Sequence[VQAItem]], tasks: Sequence[str] = (), *, shots: int, where: str = "tasks"
) -> dict[str, dict[str, list[VQAItem]]]:
    """{pool: {split: items}} for the pools in `tasks` (empty: every pool of the train split).

    Raises ValueError, before anything is trained, naming the pool (and `where`, e.g. "live.tasks") when a pool
    is unknown, has fewer than `shots` + 1 train items (the teacher's demos exclude the query; the k-shot baseline
    draws `shots` distinct ones) or has no val or no test items (nothing to select on or to report).
    """
    by_split = {split: task_pools(splits[split]) for split in SPLITS}
    known = list(by_split["train"])
    names = list(tasks) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{where}: unknown task pool {unknown[0]!r}; the train split has: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: a pool is listed twice: {names}")
    out: dict[str, dict[str, list[VQAItem]]] = {}
    for name in names:
        train = by_split["train"][name]
        if len(train) < shots + 1:
            raise ValueError(f"{where}: pool {name!r} has {len(train)} train items; {shots}-shot teachers need at "
                             f"least {shots + 1}")
        for split in ("val", "test"):
            if not by_split[split].get(name):
                raise ValueError(f"{where}: pool {name!r} has no {split} items")
        out[name] = {split: list(by_split[split][name]) for split in SPLITS}
    return out
