"""The LIVE / MimIC distillation loop: demo sampling, the schedule, teacher/student token alignment, positions
of padded batches, frozen base weights, resumable checkpoints, the non-finite-loss guard, evaluation.

Tiny random-weight models (`build_tiny`) and hand-made VQA items on solid-colour images: the numbers are not
the point, the mechanics are.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from vectorutil import assert_state_equal, state_copy, tiny

import lmmops.vectors.train as train_module
from lmmops.config import DistillSettings
from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.eval.metrics import normalize_answer
from lmmops.models import ICLItem, PromptAlignmentError, adapter_for
from lmmops.vectors import LiveVectors, LossParts, MimicVectors, attach_mimic, capture_outputs, live_loss
from lmmops.vectors.data import DemoPool, draw_demos, query_batch, sample_step
from lmmops.vectors.train import (
    AlignedTokens,
    DistillConfig,
    NonFiniteLossError,
    align_tokens,
    answer_lm_loss,
    chunk_weights,
    distill,
    evaluate_vectors,
    lr_factor,
    warmup_steps,
)

from testutil import tiny_distill

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
MULTIMODAL = ("idefics", "idefics2", "idefics3", "llava", "qwen2_vl", "qwen2_5_vl")


def vqa_item(i: int, image: Path, question: str, answer: str, qtype: str = "icl/colour/en") -> VQAItem:
    answers = tuple(VQAAnswer(answer, "yes", k) for k in range(10))
    return VQAItem(i, i, question, qtype, "other", answer, answers, image, "train")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[VQAItem]:
    """8 items of one task; two question wordings so that batches need padding."""
    root = tmp_path_factory.mktemp("pool")
    out = []
    for i, colour in enumerate(COLOURS):
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        out.append(vqa_item(i, path, "What color is the shape in this picture?" if i % 2 else "Color?", colour))
    return out


# ----- sampling, schedule, alignment (pure) ---------------------------------------------------------


def test_demos_are_drawn_with_replacement_and_never_the_query():
    ids = [10, 11, 12]
    seen_repeat = False
    for step in range(20):
        draws = sample_step(ids, batch_size=2, shots=8, seed=3, step=step)
        assert draws == sample_step(ids, batch_size=2, shots=8, seed=3, step=step)  # a function of (seed, step)
        for draw in draws:
            assert len(draw.demos) == 8 and draw.query not in draw.demos
            seen_repeat |= len(set(draw.demos)) < len(draw.demos)  # 8 draws from 2 candidates: always
    assert seen_repeat
    assert sample_step(ids, batch_size=2, shots=8, seed=3, step=0) != sample_step(ids, batch_size=2, shots=8,
                                                                                   seed=4, step=0)
    # every item with the query's question id is excluded, not just the query's index
    rng = np.random.default_rng(0)
    assert set(draw_demos(rng, np.array([7, 7, 8]), 0, 50)) == {2}
    with pytest.raises(ValueError, match="no demonstration candidates"):
        draw_demos(rng, np.array([7, 7]), 0, 1)


def test_queries_cover_the_pool_once_per_epoch():
    for epoch in range(3):
        batches = [query_batch(10, batch_size=4, seed=1, step=epoch * 3 + b) for b in range(3)]
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(i for b in batches for i in b) == list(range(10))
    assert query_batch(10, batch_size=4, seed=1, step=0) != query_batch(10, batch_size=4, seed=1, step=3)


def test_pool_checks(pool):
    with pytest.raises(ValueError, match="unique"):
        DemoPool([pool[0], pool[1], pool[0]])
    with pytest.raises(ValueError, match="at least 2"):
        DemoPool(pool[:1])


def test_lr_schedule_by_hand():
    cfg = tiny_distill("live", train={"steps": 20, "warmup_share": 0.1})
    assert warmup_steps(cfg, 20) == 2
    assert lr_factor(0, 20, 2) == 0.5 and lr_factor(1, 20, 2) == 1.0
    assert lr_factor(2, 20, 2) == 1.0
    assert lr_factor(11, 20, 2) == pytest.approx(0.5)  # halfway through the 18 cosine steps
    assert lr_factor(19, 20, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert cfg.method == "live" and tiny_distill("mimic").method == "mimic"  # the training settings' type
    assert tiny_distill("mimic").vector_lr == 5e-3 and cfg.vector_lr == 1e-3  # lr None: the papers' learning rates
    with pytest.raises(ValueError, match="unknown method"):
        DistillConfig(train=DistillSettings(steps=1, lr=None), shots=2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        tiny_distill("live", train={"steps": 0})


def test_teacher_and_student_tokens_align():
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    demos = [ICLItem(red, "Color?", "red"), ICLItem(blue, "And this one, which colour?", "dark blue")]
    queries = [ICLItem(blue, "What color is it?", "dark blue"), ICLItem(red, "Color?", "red")]
    kw = {"with_answer": True, "instruction": "Answer briefly.", "padding_side": "right"}
    teacher = adapter.build_prompts([(demos, queries[0]), (demos[:1], queries[1])], **kw)
    student = adapter.build_prompts([([], q) for q in queries], **kw)
    aligned = align_tokens(teacher, student)
    for r in range(2):
        t_ids = teacher.input_ids[r][aligned.teacher_query[r]]
        assert torch.equal(t_ids, student.input_ids[r][aligned.student_query[r]])
        assert torch.equal(teacher.input_ids[r][aligned.teacher_answer[r]],
                           student.input_ids[r][aligned.student_answer[r]])
        # the teacher's query starts where its demos end, the student's right after the prefix (BOS + instruction)
        assert int(aligned.teacher_query[r].nonzero()[0]) == teacher.demo_spans[r][1] > teacher.prefix_spans[r][1]
        assert int(aligned.student_query[r].nonzero()[0]) == student.prefix_spans[r][1]
        assert not aligned.student_query[r, : student.prefix_spans[r][1]].any()  # no BOS, no instruction
        assert int(aligned.student_answer[r].sum()) == len(processor.tokenizer(" " + queries[r].answer,
                                                                                 add_special_tokens=False).input_ids)
    assert not aligned.student_query[1][student.attention_mask[1] == 0].any()  # no pads
    swapped = adapter.build_prompts([([], q) for q in reversed(queries)], **kw)
    with pytest.raises(PromptAlignmentError, match="query tokens"):
        align_tokens(teacher, swapped)
    other_instruction = adapter.build_prompts([([], q) for q in queries], **{**kw, "instruction": "Be short."})
    with pytest.raises(PromptAlignmentError, match="prefix tokens"):
        align_tokens(teacher, other_instruction)
    with pytest.raises(PromptAlignmentError, match="demonstration tokens"):
        align_tokens(teacher, teacher)


def test_answer_lm_loss_matches_live_loss_lm_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]).bool()
    want = torch.nn.functional.cross_entropy(torch.stack([logits[0, 2], logits[0, 3], logits[1, 1]]),
                                             torch.stack([ids[0, 3], ids[0, 4], ids[1, 2]]))
    assert answer_lm_loss(logits, mask, ids).item() == pytest.approx(want.item(), abs=1e-6)
    assert live_loss(logits, logits, mask, mask, ids).lm.item() == pytest.approx(want.item(), abs=1e-6)


# ----- positions: right-padded rows behave as the prompt alone --------------------------------------


@pytest.mark.parametrize("family", MULTIMODAL)
def test_right_padded_student_rows_match_each_prompt_alone(family, pool):
    """MimIC reads absolute positions (logZ1 = w.q after RoPE): the training layout must number each row's
    tokens as the prompt alone (and as generate() does), in every family, M-RoPE included."""
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    items = DemoPool(pool)
    students = [([], items.prompt_item(0)), ([], items.prompt_item(1))]
    assert students[0][1].question != students[1][1].question  # two lengths: one row is padded
    vectors = MimicVectors.for_adapter(adapter, seed=1)
    with torch.no_grad():
        vectors.shift.normal_(0.0, 1.0)
        vectors.weight.normal_(0.0, 0.5)
    kw = {"with_answer": True, "padding_side": "right"}
    batch = adapter.build_prompts(students, **kw)
    with torch.no_grad(), attach_mimic(model, vectors, adapter), capture_outputs(adapter.mlp_modules) as mlp:
        model(**batch.model_inputs())
        together = [h.clone() for h in mlp]
        for r, spec in enumerate(students):
            alone = adapter.build_prompts([spec], **kw)
            model(**alone.model_inputs())
            q0, q1 = batch.query_spans[r]
            a0, a1 = alone.query_spans[0]
            for got, want in zip(together, mlp, strict=True):
                assert torch.allclose(got[r, q0:q1], want[0, a0:a1], atol=1e-5)


@pytest.mark.parametrize("family", MULTIMODAL)
def test_one_step_of_each_method_in_every_family(family, pool):
    model, processor = tiny(family)
    for method in ("live", "mimic"):
        cfg = tiny_distill(method, train={"steps": 1, "batch_size": 2})
        result = distill(cfg, model, processor, pool, progress=False)
        assert math.isfinite(result.history[-1]["loss"]) and result.history[-1]["loss_distill"] >= 0


# ----- the loop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["live", "mimic"])
def test_training_changes_every_vector_and_no_base_weight(method, pool):
    model, processor = tiny("llava")
    before = state_copy(model)
    flags = [p.requires_grad for p in model.parameters()]
    logged: list[tuple[int, dict[str, float]]] = []
    result = distill(tiny_distill(method, seed=5), model, processor, pool, progress=False,
                     on_log=lambda step, m: logged.append((step, m)))
    fresh = type(result.vectors).for_adapter(adapter_for(model, processor), seed=5)
    for name, value in result.vectors.state_dict().items():
        assert not torch.equal(value, fresh.state_dict()[name]), name
    assert_state_equal(model, before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert [s for s, _ in logged] == [1, 2, 3, 4] and result.steps == 4
    for _, m in logged:
        assert math.isfinite(m["loss"]) and m["loss"] == pytest.approx(m["loss_distill"] + 0.5 * m["loss_lm"])
    assert ("alpha_mean" in logged[0][1]) == (method == "live")


@pytest.mark.parametrize("method", ["live", "mimic"])
def test_resume_continues_where_it_stopped_with_identical_results(method, pool, tmp_path):
    model, processor = tiny("llava")
    straight = distill(tiny_distill(method), model, processor, pool, progress=False)
    first = distill(tiny_distill(method), model, processor, pool, checkpoint_dir=tmp_path, stop_after=2, progress=False)
    assert first.steps == 2 and first.checkpoint is not None and first.checkpoint.parent.name == first.key
    replayed: list[int] = []
    resumed = distill(tiny_distill(method), model, processor, pool, checkpoint_dir=tmp_path, progress=False,
                      on_log=lambda step, _m: replayed.append(step))
    assert resumed.resumed_from == 2 and resumed.steps == 4 and replayed == [1, 2, 3, 4]
    for name, value in straight.vectors.state_dict().items():
        assert torch.equal(resumed.vectors.state_dict()[name], value), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    # another config (or data) is another key: it starts from scratch
    other = distill(tiny_distill(method, train={"lm_weight": 0.25}), model, processor, pool, checkpoint_dir=tmp_path,
                    stop_after=1, progress=False)
    assert other.key != first.key and other.resumed_from == 0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pool, tmp_path, monkeypatch):
    model, processor = tiny("llava")
    good = distill(tiny_distill("live"), model, processor, pool, stop_after=2, progress=False)
    calls = {"n": 0}

    def nan_at_step_3(*args: Any, **kwargs: Any) -> LossParts:
        calls["n"] += 1
        parts = live_loss(*args, **kwargs)
        return parts._replace(total=parts.total * float("nan")) if calls["n"] == 3 else parts

    monkeypatch.setattr(train_module, "live_loss", nan_at_step_3)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss nan.*holds step 2"):
        distill(tiny_distill("live"), model, processor, pool, checkpoint_dir=tmp_path, progress=False)
    (ckpt,) = tmp_path.glob("*/last.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 2
    for name, value in good.vectors.state_dict().items():
        assert torch.equal(state["vectors"][name], value), name
    monkeypatch.setattr(train_module, "live_loss", live_loss)
    resumed = distill(tiny_distill("live"), model, processor, pool, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4


def test_chunk_weights_by_hand():
    def aligned(query: list[int], answer: list[int]) -> AlignedTokens:
        q, a = torch.tensor([query]).bool(), torch.tensor([answer]).bool()
        return AlignedTokens(q, q, a, a)

    chunks = [aligned([1, 1, 1, 0], [0, 0, 1, 0]), aligned([1, 1, 1, 1], [0, 0, 1, 1])]  # 3 + 4 query, 1 + 2 answer
    assert chunk_weights("live", chunks) == [(1 / 3, 1 / 3), (2 / 3, 2 / 3)]
    assert chunk_weights("mimic", chunks) == [(3 / 7, 1 / 3), (4 / 7, 2 / 3)]
    assert chunk_weights("mimic", chunks[:1]) == [(1.0, 1.0)]


@pytest.mark.parametrize("method", ["live", "mimic"])
def test_micro_batches_accumulate_to_the_whole_batch(method, pool):
    """Rows differ in query and answer length (byte-level BPE): token-share weights still give the batch loss."""
    model, processor = tiny("llava")
    whole = distill(tiny_distill(method, train={"steps": 2}), model, processor, pool, progress=False)
    chunked = distill(tiny_distill(method, train={"steps": 2, "micro_batch_size": 3}), model, processor, pool,
                      progress=False)
    assert [h["loss"] for h in chunked.history] == pytest.approx([h["loss"] for h in whole.history], rel=1e-5)
    for name, value in whole.vectors.state_dict().items():
        assert torch.allclose(chunked.vectors.state_dict()[name], value, atol=1e-6), name


# ----- evaluation ----------------------------------------------------------------------------------


def test_evaluate_vectors(pool):
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    plain: list[dict[str, Any]] = []
    zero = evaluate_vectors(model, processor, None, pool, batch_size=4, max_new_tokens=3, samples_out=plain)
    assert zero["queries"] == len(pool) and 0.0 <= zero["accuracy"] <= 1.0 and "accuracy/icl/colour/en" in zero
    idle = LiveVectors.for_adapter(adapter)
    with torch.no_grad():
        idle.alpha.zero_()  # alpha = 0: the LIVE hook returns h bit for bit
    same: list[dict[str, Any]] = []
    evaluate_vectors(model, processor, idle, pool, batch_size=4, max_new_tokens=3, samples_out=same)
    assert [s["prediction"] for s in same] == [s["prediction"] for s in plain]
    # items whose answer is the model's own prediction (as the VQA metric normalises it) score 1, with or without
    # annotator answers
    echo = [vqa_item(it.question_id, it.image_path, it.question, normalize_answer(s["prediction"]), "x")
            for it, s in zip(pool, plain, strict=True) if normalize_answer(s["prediction"])]
    assert echo, "the tiny model predicted nothing at all"
    echo = echo[:2] + [dataclasses.replace(e, answers=()) for e in echo[2:]]
    assert evaluate_vectors(model, processor, idle, echo, batch_size=4, max_new_tokens=3)["accuracy/x"] == 1.0
