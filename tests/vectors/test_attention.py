"""The "lmmops_mimic" attention function: attention + log-sum-exp from one set of scores, masks, installation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from vectorutil import tiny

from lmmops.models import FAMILIES, adapter_for
from lmmops.vectors import AttentionCall, attention_shifts, attention_with_lse

from testutil import icl_items


def test_lse_and_output_by_hand_with_padding_mask():
    # one head, one query q = (1, 0); keys (1,0), (0,1), (2,0); the third key is masked out (padding)
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]]])
    mask = torch.tensor([True, True, False])[None, None, None, :]
    out, lse = attention_with_lse(q, k, v, mask, scaling=1.0)
    # scores 1, 0 over the attended keys
    assert lse.item() == pytest.approx(math.log(math.e + 1.0), abs=1e-6)
    p = math.e / (math.e + 1.0)
    assert out[0, 0, 0].tolist() == pytest.approx([p * 1 + (1 - p) * 3, p * 2 + (1 - p) * 4], abs=1e-6)
    # the same with an additive float mask, and with the scale 1/sqrt(2)
    out_f, lse_f = attention_with_lse(q, k, v, torch.tensor([0.0, 0.0, -1e30])[None, None, None, :], scaling=1.0)
    assert torch.allclose(out_f, out) and torch.allclose(lse_f, lse)
    _, lse_s = attention_with_lse(q, k, v, mask, scaling=2**-0.5)
    assert lse_s.item() == pytest.approx(math.log(math.exp(2**-0.5) + 1.0), abs=1e-6)


def test_causal_without_mask_aligns_queries_to_the_end_of_the_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    out, lse = attention_with_lse(q, k, v, None, scaling=0.5, is_causal=True)
    scores = q @ k.transpose(-1, -2) * 0.5
    # query 0 sees keys 0..1, query 1 sees keys 0..2 (a cache of one key, then two new tokens)
    assert torch.allclose(lse[..., 0], torch.logsumexp(scores[..., 0, :2], -1), atol=1e-6)
    assert torch.allclose(lse[..., 1], torch.logsumexp(scores[..., 1, :], -1), atol=1e-6)
    want0 = torch.softmax(scores[..., 0, :2], -1)[..., None, :] @ v[..., :2, :]
    assert torch.allclose(out[..., 0:1, :], want0, atol=1e-6)


def test_fully_masked_row_is_zero_and_finite():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[False, False, False], [True, True, True]])[None, None]
    out, lse = attention_with_lse(q, k, v, mask, scaling=1.0)
    assert torch.isfinite(lse).all() and torch.equal(out[0, 0, 0], torch.zeros(4))
    assert torch.allclose(out[0, 0, 1], torch.softmax(q[0, 0, 1] @ k[0, 0].T, -1) @ v[0, 0], atol=1e-6)


def test_gradient_flows_through_lse():
    q = torch.randn(1, 1, 1, 4, requires_grad=True)
    k = torch.randn(1, 1, 3, 4)
    _, lse = attention_with_lse(q, k, torch.randn(1, 1, 3, 4), None, scaling=1.0)
    lse.sum().backward()
    want = (torch.softmax(q.detach()[0, 0, 0] @ k[0, 0].T, -1)[:, None] * k[0, 0]).sum(0)
    assert torch.allclose(q.grad[0, 0, 0], want, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_pass_through_shifts_reproduce_the_model_and_restore_config(family):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    inputs = adapter.build_prompt(demos, query, with_answer=True).model_inputs()
    before = [c._attn_implementation for c in (model.config, adapter.text_config)]
    calls: list[int] = []

    def identity(call: AttentionCall) -> torch.Tensor:
        calls.append(call.query.shape[1])
        return call.output

    with torch.no_grad():
        plain = model(**inputs).logits
        with attention_shifts(adapter, [identity] * adapter.num_layers):
            assert adapter.attn_implementation == "lmmops_mimic"
            shifted = model(**inputs).logits
        after = model(**inputs).logits
    assert calls == [adapter.num_heads] * adapter.num_layers  # every layer, heads repeated for GQA
    assert torch.allclose(shifted, plain, atol=1e-5)
    assert torch.equal(after, plain)
    assert [c._attn_implementation for c in (model.config, adapter.text_config)] == before
    assert not any(hasattr(m, "_lmmops_shift") for m in adapter.self_attn_modules)


def test_non_interface_attention_is_refused():
    model, processor = tiny("llama")
    adapter = adapter_for(model, processor)

    class OwnAttention(nn.Module):
        config = model.config

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return hidden_states

    layer = adapter.decoder_layers[0]
    original = layer.self_attn
    layer.self_attn = OwnAttention()
    try:
        with pytest.raises(NotImplementedError, match="does not dispatch"), attention_shifts(adapter, [None, None]):
            pass
    finally:
        layer.self_attn = original


def test_nested_attach_is_refused():
    model, processor = tiny("llama")
    adapter = adapter_for(model, processor)
    with (
        attention_shifts(adapter, [None, lambda c: c.output]),
        pytest.raises(RuntimeError, match="already attached"),
        attention_shifts(adapter, [None, None]),
    ):
        pass
    assert not any(hasattr(m, "_lmmops_shift") for m in adapter.self_attn_modules)
