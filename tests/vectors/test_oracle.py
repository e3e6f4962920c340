"""The shift identity of docs/methods.md §4 on every family: oracle-shifted zero-shot = k-shot, at every layer."""

from __future__ import annotations

import pytest
import torch
from vectorutil import open_idefics_gates, tiny

from lmmops.models import FAMILIES
from lmmops.vectors import check_shift_exactness

from testutil import icl_items

TOLERANCE = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_shift_reproduces_kshot_attention(family):
    model, processor = tiny(family)
    assert next(model.parameters()).dtype == torch.float32
    demos, query = icl_items(family)
    result = check_shift_exactness(model, processor, demos, query)
    assert len(result.layer_errors) == 2 and result.kshot_outputs[0].shape[0] > 5
    assert result.max_error <= TOLERANCE, result.layer_errors
    assert result.logits_error <= TOLERANCE
    # the shift is what makes it exact: the zero-shot forward alone is far from the k-shot run
    assert check_shift_exactness(model, processor, demos, query, shift=False).max_error > 1e-2


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_oracle_with_instruction_and_one_demo(family):
    model, processor = tiny(family)
    demos, query = icl_items(family)
    result = check_shift_exactness(model, processor, demos[:1], query, instruction="Answer briefly.")
    assert result.max_error <= TOLERANCE, result.layer_errors


def test_idefics_needs_the_kshot_cross_attention_context():
    """Idefics v1's query starts with a token that cross-attends to the last demo image (see oracle.py)."""
    model, processor = tiny("idefics", seed=1)  # a model of its own: its gates are opened below
    open_idefics_gates(model)
    demos, query = icl_items("idefics")
    exact = check_shift_exactness(model, processor, demos, query)
    assert exact.max_error <= TOLERANCE, exact.layer_errors
    without_context = check_shift_exactness(model, processor, demos, query, keep_context=False)
    assert without_context.max_error > 1e-3
    # it starts at the query's first token (its layer-0 input differs) and reaches the others through it
    per_token = (without_context.shifted_outputs[0] - without_context.kshot_outputs[0]).abs().amax(-1)
    assert int(per_token.argmax()) == 0


def test_oracle_needs_demos():
    model, processor = tiny("llama")
    _, query = icl_items("llama")
    with pytest.raises(ValueError, match="at least one demonstration"):
        check_shift_exactness(model, processor, [], query)
