"""Helpers for tests of lmmops.vectors: tiny models (built once per session), another query, state checks.

Run: imported by the tests in this folder. Tiny models are cached by (family, seed) and must be left as they
were found (every test that attaches vectors checks that detaching restores the model).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from lmmops.models import ICLItem, build_tiny

from testutil import solid


def other_query(family: str) -> ICLItem:
    """A query other than testutil.icl_items' (no image for text-only llama)."""
    return ICLItem(None if family == "llama" else solid("yellow"), "Color?", "yellow")


@cache
def tiny(family: str, seed: int = 0) -> tuple[Any, Any]:
    """A cached tiny model of `family` (eval mode, float32) and its processor."""
    return build_tiny(family, seed=seed)


def open_idefics_gates(model: Any, value: float = 1.0) -> None:
    """Idefics v1's gated cross-attention starts closed (tanh(0) = 0); open it so that images matter."""
    for layer in model.model.gated_cross_attn_layers:
        layer.alpha_cross_attn.data.fill_(value)
        layer.alpha_dense.data.fill_(value)


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"base weights changed: {changed[:5]}"
