"""The fused attention path of "lmmops_mimic" (torch's CPU flash kernel with its log-sum-exp) against the explicit one.

Both must give the same output and logZ2 (<= 1e-5) under padding + causal masks, GQA, fully-masked (left-padding)
rows and cached decoding with one query token; gradients and dropout keep the explicit path.

Run: `python -m pytest tests/vectors/test_fused_attention.py -q`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_mimic import counted_from_first_token, strong_vectors
from vectorutil import other_query, tiny

from lmmops.models import FAMILIES, adapter_for
from lmmops.vectors import AttentionCall, attach_mimic, attention_shifts, attention_with_lse
from lmmops.vectors import attention as attn

from testutil import icl_items

TOL = 1e-5
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)


def padded_causal_mask(lengths: list[int], q_len: int, kv_len: int) -> torch.Tensor:
    """(b, 1, q, kv) boolean: causal (queries at the end of the keys) and left padding of each row's keys."""
    rows = torch.arange(q_len)[:, None] + (kv_len - q_len)
    causal = rows >= torch.arange(kv_len)[None, :]
    keys = torch.stack([torch.arange(kv_len) >= kv_len - n for n in lengths])  # (b, kv): real keys at the end
    return causal[None, None] & keys[:, None, None, :]


def qkv(batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # q laid out as transformers makes it: (b, q, h, d) projected, then transposed to (b, h, q, d)
    q = torch.randn(batch, q_len, heads, dim, generator=gen).transpose(1, 2)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=gen)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=gen)
    return q, k, v


def both(q, k, v, mask, **kw) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return (attention_with_lse(q, k, v, mask, path=attn.CPU_FLASH, **kw),
            attention_with_lse(q, k, v, mask, path=attn.EXPLICIT, **kw))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_prefill_with_padding_causal_and_gqa(kv_heads):
    q, k, v = qkv(3, 4, kv_heads, 9, 9)
    mask = padded_causal_mask([9, 5, 2], 9, 9)  # rows 1 and 2 are left-padded: their first queries see nothing
    (out_f, lse_f), (out_e, lse_e) = both(q, k, v, mask, scaling=0.25)
    assert out_f.shape == out_e.shape == (3, 4, 9, 16) and lse_f.shape == lse_e.shape == (3, 4, 9)
    assert lse_f.dtype == torch.float32
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)
    dead = ~mask.any(-1).expand(3, 4, 9)
    assert int(dead.sum()) == 4 * (4 + 7)
    assert torch.equal(out_f[dead], torch.zeros_like(out_f[dead]))
    assert torch.all(lse_f[dead] == LOG_TINY) and torch.isfinite(lse_f).all()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cached_decoding_one_query(kv_heads):
    q, k, v = qkv(3, 4, kv_heads, 1, 12, seed=1)
    mask = padded_causal_mask([12, 6, 1], 1, 12)  # (3, 1, 1, 12), as transformers passes it when decoding
    (out_f, lse_f), (out_e, lse_e) = both(q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)
    # the last key alone (row 2): lse is that one score
    want = (q[2, :, 0] * k[2, torch.arange(4) // (4 // kv_heads), -1]).sum(-1) * 0.25
    torch.testing.assert_close(lse_f[2, :, 0], want, atol=TOL, rtol=TOL)


def test_several_new_tokens_after_a_cache_and_no_mask():
    q, k, v = qkv(2, 4, 2, 3, 7, seed=2)
    (out_f, lse_f), (out_e, lse_e) = both(q, k, v, None, scaling=0.3, is_causal=True)  # bottom-right causal
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)
    q, k, v = qkv(2, 4, 2, 5, 5, seed=3)
    for causal in (True, False):
        (out_f, lse_f), (out_e, lse_e) = both(q, k, v, None, scaling=0.3, is_causal=causal)
        torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
        torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)


def test_additive_float_mask_with_a_fully_masked_row():
    q, k, v = qkv(2, 2, 2, 4, 4, seed=4)
    mask = padded_causal_mask([4, 2], 4, 4)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    (out_f, lse_f), (out_e, lse_e) = both(q, k, v, additive, scaling=0.25)
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)
    assert torch.all(lse_f[1, :, :2] == LOG_TINY)


def test_mask_cache_follows_in_place_changes():
    q, k, v = qkv(1, 2, 2, 1, 6, seed=5)
    mask = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    first, _ = attention_with_lse(q, k, v, mask, scaling=0.25, path=attn.CPU_FLASH)
    mask[..., :3] = False  # same tensor object, new contents
    (out_f, lse_f), (out_e, lse_e) = both(q, k, v, mask, scaling=0.25)
    assert not torch.allclose(first, out_f)
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)


def test_path_choice():
    q, k, v = qkv(1, 2, 2, 3, 3)
    with torch.no_grad():
        assert attn.attention_path(q, k, v) == attn.CPU_FLASH
        assert attn.attention_path(q, k, v, dropout=0.1, training=True) == attn.EXPLICIT
        assert attn.attention_path(q.double(), k.double(), v.double()) == attn.EXPLICIT
        assert attn.attention_path(q, k, v, torch.ones(1, 1, 3, 3, dtype=torch.long)) == attn.EXPLICIT
    assert attn.attention_path(q, k, v) == attn.CPU_FLASH  # grad mode on, but nothing requires grad
    assert attn.attention_path(q.requires_grad_(), k, v) == attn.EXPLICIT  # lse must be differentiable
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attn, "FUSED_ENABLED", False)
        assert attn.attention_path(q.detach(), k, v) == attn.EXPLICIT


def test_gradient_keeps_the_explicit_path():
    q, k, v = qkv(1, 4, 2, 3, 3)
    q.requires_grad_()
    _, lse = attention_with_lse(q, k, v, padded_causal_mask([3], 3, 3), scaling=0.5)
    assert lse.grad_fn is not None
    lse.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


class Recorder:
    """Keeps every call's (q_len, lse) and returns the output unchanged."""

    def __init__(self) -> None:
        self.lse: list[torch.Tensor] = []

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        self.lse.append(call.lse)
        return call.output


def generate_run(model: Any, adapter: Any, tokenizer: Any, inputs: dict[str, Any], fused: bool,
                 paths: list[str]) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], torch.Tensor]:
    """Cached generation with MimIC, then a recorded forward: (step logits, per-layer lse, sequences)."""
    real = attn.attention_path

    def spy(*args: Any, **kwargs: Any) -> str:
        paths.append(real(*args, **kwargs))
        return paths[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attn, "FUSED_ENABLED", fused)
        mp.setattr(attn, "attention_path", spy)
        with torch.no_grad():
            with attach_mimic(model, strong_vectors(adapter), adapter):
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True,
                                     output_logits=True, return_dict_in_generate=True,
                                     pad_token_id=tokenizer.pad_token_id)
            recorders = [Recorder() for _ in range(adapter.num_layers)]
            with attention_shifts(adapter, recorders):
                model.generate(**inputs, max_new_tokens=2, do_sample=False, use_cache=True,
                               pad_token_id=tokenizer.pad_token_id)
    return list(out.logits), [r.lse for r in recorders], out.sequences


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_explicit_generate_the_same(family):
    """Left-padded batch, cached decoding, MimIC attached: the fused path is taken and matches the explicit one."""
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    batch = adapter.build_prompts([(demos[:1], query), ([], other_query(family))])  # row 1 left-padded
    inputs = counted_from_first_token(family, batch.model_inputs())
    tokenizer = getattr(processor, "tokenizer", processor)
    fused_paths: list[str] = []
    explicit_paths: list[str] = []
    logits_f, lse_f, seq_f = generate_run(model, adapter, tokenizer, inputs, True, fused_paths)
    logits_e, lse_e, seq_e = generate_run(model, adapter, tokenizer, inputs, False, explicit_paths)
    assert set(fused_paths) == {attn.CPU_FLASH} and set(explicit_paths) == {attn.EXPLICIT}
    assert torch.equal(seq_f, seq_e)
    for got, want in zip(logits_f, logits_e, strict=True):
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    for layer_f, layer_e in zip(lse_f, lse_e, strict=True):
        assert [t.shape[2] for t in layer_f] == [t.shape[2] for t in layer_e] and layer_f[-1].shape[2] == 1
        for got, want in zip(layer_f, layer_e, strict=True):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_inference_mode_masks_are_not_cached():
    q, k, v = qkv(1, 2, 2, 1, 6, seed=6)
    with torch.inference_mode():
        mask = torch.ones(1, 1, 1, 6, dtype=torch.bool)
        first, _ = attention_with_lse(q, k, v, mask, scaling=0.25, path=attn.CPU_FLASH)
        mask[..., :3] = False
        (out_f, lse_f), (out_e, lse_e) = both(q, k, v, mask, scaling=0.25)
    assert not torch.allclose(first, out_f)
    torch.testing.assert_close(out_f, out_e, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse_f, lse_e, atol=TOL, rtol=TOL)


def test_mimic_shift_parameter_views_follow_updates():
    """MimicShift reuses its parameter views under no_grad: in-place and `.data` updates must show through."""
    from lmmops.vectors import MimicVectors
    from lmmops.vectors.mimic import MimicShift

    vectors = MimicVectors(2, 32, 4, 8)
    shift = MimicShift(vectors, 1)
    q, k, v = qkv(2, 4, 2, 1, 5, dim=8, seed=7)
    out, lse = attention_with_lse(q, k, v, scaling=0.3)

    def run() -> torch.Tensor:
        return shift(AttentionCall(q, k, v, out, lse, 0.3, 2))

    def reference() -> torch.Tensor:
        w, b, vv = (t.detach()[1] for t in (vectors.weight, vectors.bias, vectors.shift))
        mu = torch.sigmoid(torch.einsum("bhqd,hd->bhq", q, w) + b[None, :, None] - lse)
        return out + mu[..., None] * vv[None, :, None, :]

    with torch.no_grad():
        torch.testing.assert_close(run(), reference())
        vectors.shift.add_(1.0)
        vectors.weight.mul_(3.0)
        torch.testing.assert_close(run(), reference())
        vectors.bias.data = torch.full_like(vectors.bias, 2.0)
        torch.testing.assert_close(run(), reference())
    with_grad = run()  # grad mode: rebuilt from the parameters, differentiable
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), reference())
