"""LIVE: the per-token norm-preserving shift, attach/detach, training on a frozen tiny model, the loss."""

from __future__ import annotations

import math

import pytest
import torch
from vectorutil import assert_state_equal, state_copy, tiny

from lmmops.models import FAMILIES, adapter_for
from lmmops.vectors import LiveVectors, VectorMismatchError, attach_live, live_loss, live_shift, live_site_modules

from testutil import icl_items


def test_live_shift_by_hand():
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # a token of norm 5 and an all-zero (pad-like) token
    out = live_shift(h, torch.tensor([1.0, 0.0]), torch.tensor(2.0))
    # s = (5, 4), ||s|| = sqrt(41), h' = s * 5 / sqrt(41); the zero token stays zero
    assert out[0].tolist() == pytest.approx([25 / math.sqrt(41), 20 / math.sqrt(41)], abs=1e-6)
    assert out[0].norm().item() == pytest.approx(5.0, abs=1e-6)
    assert torch.equal(out[1], torch.zeros(2))


def test_parameters_and_init():
    vectors = LiveVectors(32, 4096, 32, 128)
    assert vectors.num_parameters() == LiveVectors.count(32, 4096) == 131_104
    assert torch.equal(vectors.alpha, torch.full((32,), 0.1))
    assert abs(vectors.vectors.std().item() - 0.01) < 1e-3


def test_site_per_family():
    for family in ("idefics", "idefics2"):
        model, processor = tiny(family)
        adapter = adapter_for(model, processor)
        want = list(adapter.decoder_layers) if family == "idefics" else adapter.mlp_modules
        assert all(a is b for a, b in zip(live_site_modules(adapter), want, strict=True))


def _inputs(family: str):
    model, processor = tiny(family)
    _, query = icl_items(family)
    return model, adapter_for(model, processor).build_prompt([], query, with_answer=True).model_inputs()


@pytest.mark.parametrize("family", FAMILIES)
def test_attach_detach_and_zero_alpha(family):
    model, inputs = _inputs(family)
    vectors = LiveVectors.for_adapter(adapter_for(model), seed=1)
    with torch.no_grad():
        plain = model(**inputs).logits
        with attach_live(model, vectors):
            shifted = model(**inputs).logits
        after = model(**inputs).logits
        assert not torch.allclose(shifted, plain, atol=1e-4)  # the intervention does something
        assert torch.equal(after, plain)  # and is gone after the block
        vectors.alpha.zero_()
        with attach_live(model, vectors):
            assert torch.equal(model(**inputs).logits, plain)  # alpha = 0: bit-identical
        vectors.alpha.fill_(0.5)
        vectors.vectors.zero_()
        with attach_live(model, vectors):
            assert torch.equal(model(**inputs).logits, plain)  # v = 0: bit-identical
    assert all(p.requires_grad for p in model.parameters())  # flags restored


@pytest.mark.parametrize("family", ["llava", "idefics"])  # the MLP-output site and the decoder-layer-output site
def test_inference_path_equals_the_autograd_path_and_follows_updates(family):
    # Without autograd the hook reuses alpha_l * v_l; it must give live_shift's output bit for bit, and see an
    # in-place update of the vectors made inside the same attachment (an optimiser step, load_state_dict).
    model, inputs = _inputs(family)
    vectors = LiveVectors.for_adapter(adapter_for(model), seed=3)
    with attach_live(model, vectors):
        with torch.no_grad():
            cached = model(**inputs).logits
            again = model(**inputs).logits
        graph = model(**inputs).logits.detach()  # the autograd path: live_shift itself
        assert torch.equal(cached, graph) and torch.equal(again, graph)
        for update in (lambda: vectors.vectors.mul_(-2.0), lambda: vectors.alpha.add_(0.3)):
            with torch.no_grad():
                before = model(**inputs).logits
                update()
                after = model(**inputs).logits
            assert not torch.equal(after, before)
            assert torch.equal(after, model(**inputs).logits.detach())


def test_generation_applies_live_at_every_step():
    model, inputs = _inputs("llama")
    vectors = LiveVectors.for_adapter(adapter_for(model), seed=2)
    with torch.no_grad(), attach_live(model, vectors):
        vectors.alpha.fill_(3.0)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                             output_logits=True, pad_token_id=0)
        full = model(input_ids=out.sequences, attention_mask=torch.ones_like(out.sequences)).logits
    n = inputs["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):
        assert torch.allclose(logits[0], full[0, n - 1 + step], atol=1e-4)


def test_wrong_shape_is_refused():
    model, _ = tiny("llama")
    with pytest.raises(VectorMismatchError, match="num_layers: 3 vs 2"), attach_live(model, LiveVectors(3, 64, 4, 16)):
        pass


def test_live_loss_by_hand():
    # teacher: 3 positions, answer token at position 2 -> predicted by position 1's logits, p_t = (0.5, 0.5)
    teacher = torch.zeros(1, 3, 2)
    # student: 2 positions, answer at position 1 -> predicted by position 0, p_s = (0.25, 0.75)
    student = torch.tensor([[[0.0, math.log(3.0)], [9.0, -9.0]]])
    labels = torch.tensor([[-100, 0]])
    loss = live_loss(teacher, student, torch.tensor([[0, 0, 1]]).bool(), torch.tensor([[0, 1]]).bool(), labels)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    lm = -math.log(0.25)
    assert loss.distill.item() == pytest.approx(kl, abs=1e-6)
    assert loss.lm.item() == pytest.approx(lm, abs=1e-6)
    assert loss.total.item() == pytest.approx(kl + 0.5 * lm, abs=1e-6)


def test_live_loss_means_over_answer_tokens_and_checks_counts():
    teacher = torch.zeros(1, 4, 2)
    student = torch.zeros(1, 3, 2)
    student[0, 1] = torch.tensor([0.0, math.log(3.0)])  # token 1 of 2: KL 0.5 ln(4/3); token 0: 0
    mask_t, mask_s = torch.tensor([[0, 0, 1, 1]]).bool(), torch.tensor([[0, 1, 1]]).bool()
    loss = live_loss(teacher, student, mask_t, mask_s, torch.tensor([[5, 0, 1]]))
    assert loss.distill.item() == pytest.approx(0.25 * math.log(4 / 3), abs=1e-6)
    assert loss.lm.item() == pytest.approx(0.5 * (math.log(2) + -math.log(0.75)), abs=1e-6)
    with pytest.raises(ValueError, match="answer tokens per row differ"):
        live_loss(teacher, student, torch.tensor([[0, 0, 0, 1]]).bool(), mask_s, torch.zeros(1, 3).long())


def test_training_changes_vectors_only():
    family = "idefics2"
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    demos, query = icl_items(family)
    teacher_batch = adapter.build_prompt(demos, query, with_answer=True)
    student_batch = adapter.build_prompt([], query, with_answer=True)
    before = state_copy(model)
    vectors = LiveVectors.for_adapter(adapter, seed=3)
    initial = state_copy(vectors)
    optimizer = torch.optim.AdamW(vectors.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.no_grad():
        teacher_logits = model(**teacher_batch.model_inputs()).logits
    losses = []
    with attach_live(model, vectors, adapter):
        for _ in range(3):
            student_logits = model(**student_batch.model_inputs()).logits
            loss = live_loss(teacher_logits, student_logits, teacher_batch.answer_mask, student_batch.answer_mask,
                             student_batch.input_ids)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
            losses.append(loss.total.item())
    assert all(p.grad is None for p in model.parameters())
    assert_state_equal(model, before)
    assert all(not torch.equal(initial[k], v) for k, v in vectors.state_dict().items())
    assert losses[-1] < losses[0]
