"""A pool of spawned worker processes that each load the base model once, for per-pool jobs on CPU.

The live/mimic stages train their task pools in it (`lmmops.vectors.pool_training.train_pools`) and the
vector-baselines stage fits its pools in it: one pool's work is tiny single-threaded forwards, so on a 2-core
machine a second process uses the core that would idle. Results equal one process's (each job is a function of
its arguments and the base weights; single-threaded float work gives the same bits).

Use:
    map_in_workers(job, [(args...), ...], model_spec="models/base", threads=1, workers=2, on_result=print)
    # inside `job`: model, processor = worker_model()

Run: `python -m pytest tests/vectors/test_stages.py -q -k processes`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch
from torch import nn

from lmmops.models import load_model


def map_in_workers(job: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], *, model_spec: str, threads: int,
                   workers: int, on_result: Callable[[Any], None]) -> None:
    """`job(*args)` for every `args` in `jobs`, in `workers` spawned processes that each load the base model once
    (`start_worker`; `worker_model()` inside `job`). Submitted in the order of `jobs`; `on_result(result)` as each
    finishes (completion order); a job's exception is raised here and the rest are cancelled."""
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(model_spec, threads))
    try:
        pending = {executor.submit(job, *args) for args in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                on_result(future.result())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}


def start_worker(model_spec: str, threads: int) -> None:
    """Process-pool initializer: load the base model once per worker process; `worker_model()` returns it in the
    worker's jobs."""
    torch.set_num_threads(threads)
    _WORKER["model"], _WORKER["processor"] = load_model(model_spec)


def worker_model() -> tuple[nn.Module, Any]:
    """The (model, processor) that `start_worker` loaded in this worker process."""
    if "model" not in _WORKER:
        raise RuntimeError("worker_model() outside a process started with start_worker")
    return _WORKER["model"], _WORKER["processor"]
