"""Test setup for lmmops.vectors: one torch thread (tests/conftest.py: offline hub, quiet transformers).
Helpers: `vectorutil.py`, tests/testutil.py.

Tiny-model forwards are far too small to gain from intra-op threads, and on a shared 2-core machine the
threads' spin-waiting made this folder 10x slower; each test here runs with one thread (restored after).

Run: `python -m pytest tests/vectors -q`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
