"""MimIC: parameters, attach/detach, logZ2 masking (padding, causality, cached decoding), training, the loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from vectorutil import assert_state_equal, other_query, state_copy, tiny

from lmmops.models import FAMILIES, adapter_for
from lmmops.vectors import (
    AttentionCall,
    MimicVectors,
    aligned_hidden,
    attach_mimic,
    attention_shifts,
    capture_outputs,
    mimic_loss,
)

from testutil import icl_items


def strong_vectors(adapter: Any, seed: int = 1) -> MimicVectors:
    """MimIC vectors big enough to move the logits visibly (the paper's init is 1e-3 / 0.02)."""
    vectors = MimicVectors.for_adapter(adapter, seed=seed)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vectors.shift.normal_(0.0, 1.0)
        vectors.weight.normal_(0.0, 0.5)
        vectors.bias.fill_(0.5)
    return vectors


def test_parameters_and_init():
    vectors = MimicVectors(32, 4096, 32, 128)
    assert vectors.num_parameters() == MimicVectors.count(32, 32, 128) == 263_168
    assert torch.equal(vectors.bias, torch.zeros(32, 32))
    assert abs(vectors.shift.std().item() - 1e-3) < 1e-4 and abs(vectors.weight.std().item() - 0.02) < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_attach_detach_and_zero_shift(family):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    _, query = icl_items(family)
    inputs = adapter.build_prompt([], query, with_answer=True).model_inputs()
    vectors = strong_vectors(adapter)
    with torch.no_grad():
        plain = model(**inputs).logits
        with attach_mimic(model, vectors, adapter):
            shifted = model(**inputs).logits
        assert not torch.allclose(shifted, plain, atol=1e-3)
        assert torch.equal(model(**inputs).logits, plain)  # detached: the model is as it was
        with attention_shifts(adapter, [lambda call: call.output] * adapter.num_layers):
            same_path = model(**inputs).logits
        vectors.shift.zero_()
        with attach_mimic(model, vectors, adapter):
            zero = model(**inputs).logits
    assert torch.equal(zero, same_path)  # v = 0 adds exactly nothing
    assert torch.allclose(zero, plain, atol=1e-5)  # and equals the plain model up to eager-vs-sdpa rounding
    assert all(p.requires_grad for p in model.parameters())


def counted_from_first_token(family: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Position ids that start at each row's first real token, as generate() makes them.

    MimIC's logZ1 = w.q + b reads q after RoPE, so it depends on absolute positions (logZ2 does not: q.k
    only sees relative ones). Llama-style forwards number left-padded rows from the first pad; Idefics v1 and
    Qwen's M-RoPE count from the attention mask already.
    """
    if family in ("idefics", "qwen2_vl", "qwen2_5_vl"):
        return inputs
    return dict(inputs, position_ids=(inputs["attention_mask"].long().cumsum(-1) - 1).clamp_min(0))


class LseRecorder:
    def __init__(self) -> None:
        self.lse: torch.Tensor | None = None

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        self.lse = call.lse
        return call.output


@pytest.mark.parametrize("family", FAMILIES)
def test_logz2_and_shift_respect_left_padding(family):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    vectors = strong_vectors(adapter)
    short = (demos[:0], other_query(family))
    batch = adapter.build_prompts([short, (demos[:1], query)], with_answer=True)  # row 0 is left-padded
    single = adapter.build_prompts([short], with_answer=True)
    n_pad = int((batch.attention_mask[0] == 0).sum())
    assert n_pad > 0
    with torch.no_grad():
        recorders = [LseRecorder() for _ in range(adapter.num_layers)]
        with attention_shifts(adapter, recorders):
            model(**batch.model_inputs())
        batch_lse = [r.lse[0, :, n_pad:] for r in recorders]
        with attention_shifts(adapter, recorders):
            model(**single.model_inputs())
        for got, want in zip(batch_lse, [r.lse[0] for r in recorders], strict=True):
            assert torch.allclose(got, want, atol=1e-5)
        with attach_mimic(model, vectors, adapter):
            padded = model(**counted_from_first_token(family, batch.model_inputs())).logits[0, n_pad:]
            alone = model(**single.model_inputs()).logits[0]
    assert torch.allclose(padded, alone, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "idefics2", "qwen2_vl"])
def test_causal_prefix_is_unchanged_by_later_tokens(family):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    inputs = adapter.build_prompt(demos, query, with_answer=True).model_inputs()
    n = inputs["input_ids"].shape[1]
    cut = n - 4  # the last tokens are text: drop them
    truncated = {k: (v[:, :cut] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
                 for k, v in inputs.items()}
    with torch.no_grad(), attach_mimic(model, strong_vectors(adapter), adapter):
        full = model(**inputs).logits[0, :cut]
        prefix = model(**truncated).logits[0]
    assert torch.allclose(full, prefix, atol=1e-4)


def _extend(inputs: dict[str, Any], sequences: torch.Tensor) -> dict[str, Any]:
    """The processor inputs for prompt + generated tokens (text tokens appended on the right)."""
    extra = sequences.shape[1] - inputs["input_ids"].shape[1]
    out = dict(inputs, input_ids=sequences)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, -extra:])], 1)
    if "mm_token_type_ids" in inputs:  # Qwen: new tokens are text
        mm = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(mm[:, :1]).expand(-1, extra)], 1)
    if "image_attention_mask" in inputs:  # Idefics v1: new tokens see the last image, as in generate
        iam = inputs["image_attention_mask"]
        out["image_attention_mask"] = torch.cat([iam, iam[:, -1:].expand(-1, extra, -1)], 1)
    return out


@pytest.mark.parametrize("family", ["llama", "idefics", "idefics2", "qwen2_vl"])
def test_cached_decoding_matches_full_forward(family):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    batch = adapter.build_prompts([(demos[:1], query), ([], other_query(family))])  # row 1 left-padded
    inputs = batch.model_inputs()
    tokenizer = getattr(processor, "tokenizer", processor)
    with torch.no_grad(), attach_mimic(model, strong_vectors(adapter), adapter):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=True, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        full = model(**counted_from_first_token(family, _extend(inputs, out.sequences))).logits
    n = inputs["input_ids"].shape[1]
    assert len(out.logits) == 4
    for step, logits in enumerate(out.logits):
        assert torch.allclose(logits, full[:, n - 1 + step], atol=1e-4), step


def test_mimic_loss_by_hand():
    teacher = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # (layers 2, tokens 1, hidden 2)
    student = torch.tensor([[[0.0, 0.0]], [[0.0, 2.0]]])
    loss = mimic_loss(teacher, student, torch.tensor(2.0))
    assert loss.distill.item() == pytest.approx((1.0 + 4.0) / 2)
    assert loss.total.item() == pytest.approx(2.5 + 0.5 * 2.0)
    as_lists = mimic_loss(list(teacher), list(student), torch.tensor(2.0), lm_weight=1.0)
    assert as_lists.total.item() == pytest.approx(4.5)
    with pytest.raises(ValueError, match="expected equal"):
        mimic_loss(teacher, student[:, :0], torch.tensor(0.0))


def test_aligned_hidden_picks_masked_tokens_in_order():
    hidden = [torch.arange(12.0).reshape(2, 3, 2), -torch.arange(12.0).reshape(2, 3, 2)]
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]]).bool()
    got = aligned_hidden(hidden, mask)
    assert got.shape == (2, 3, 2)
    assert got[0].tolist() == [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


def test_training_changes_vectors_only():
    family = "qwen2_vl"
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    teacher_batch = adapter.build_prompt(demos, query, with_answer=True)
    student_batch = adapter.build_prompt([], query, with_answer=True)
    before = state_copy(model)
    vectors = MimicVectors.for_adapter(adapter, seed=4)
    initial = state_copy(vectors)
    optimizer = torch.optim.AdamW(vectors.parameters(), lr=5e-3, weight_decay=1e-3)
    with torch.no_grad(), capture_outputs(adapter.mlp_modules) as mlp:
        model(**teacher_batch.model_inputs())
        teacher = aligned_hidden(mlp, teacher_batch.query_mask)
    losses = []
    with attach_mimic(model, vectors, adapter), capture_outputs(adapter.mlp_modules) as mlp:
        for _ in range(3):
            out = model(**student_batch.model_inputs(), labels=student_batch.labels())
            loss = mimic_loss(teacher, aligned_hidden(mlp, student_batch.query_mask), out.loss)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            losses.append(loss.total.item())
    assert all(p.grad is None for p in model.parameters())
    assert_state_equal(model, before)
    changed = {k: not torch.equal(initial[k], v) for k, v in vectors.state_dict().items()}
    assert all(changed.values()), changed
    assert losses[-1] < losses[0]
