"""Tests of tiny models and adapters for every family: structure counts, prompts, spans, forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmmops.models import (
    FAMILIES,
    ICLItem,
    UnsupportedModelError,
    adapter_for,
    build_tiny,
    supported_families,
)
from lmmops.models.tiny import TINY_IMAGE_TOKENS

# family -> (layers, hidden, heads, kv heads, head_dim, LIVE site)
EXPECTED = {
    "idefics": (2, 64, 4, 4, 16, "layer_output"),
    "idefics2": (2, 64, 4, 2, 16, "mlp_output"),
    "idefics3": (2, 64, 4, 2, 16, "mlp_output"),
    "llava": (2, 64, 4, 2, 16, "mlp_output"),
    "qwen2_vl": (2, 64, 4, 2, 16, "mlp_output"),
    "qwen2_5_vl": (2, 64, 4, 2, 16, "mlp_output"),
    "llama": (2, 64, 4, 2, 16, "mlp_output"),
}
CLASSES = {
    "idefics": "IdeficsForVisionText2Text",
    "idefics2": "Idefics2ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llama": "LlamaForCausalLM",
}
IMAGE_TOKEN = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>"}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, processor = build_tiny(request.param)
    return request.param, model, processor


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def decode(processor, ids: torch.Tensor, span: tuple[int, int]) -> str:
    return tokenizer_of(processor).decode(ids[span[0] : span[1]])


def test_families_and_classes():
    assert tuple(supported_families()) == FAMILIES
    assert {f: c[0] for f, c in supported_families().items()} == CLASSES


def test_adapter_structure(tiny):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    layers, hidden, heads, kv_heads, head_dim, site = EXPECTED[family]
    assert type(model).__name__ == CLASSES[family]
    assert adapter.family == family
    assert (adapter.num_layers, adapter.hidden_size) == (layers, hidden)
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (heads, kv_heads, head_dim)
    assert adapter.live_site == site
    assert adapter.attn_implementation == "sdpa"
    assert isinstance(adapter.decoder_layers, nn.ModuleList) and len(adapter.decoder_layers) == layers
    assert len(adapter.self_attn_modules) == len(adapter.mlp_modules) == layers
    # The modules really belong to the language model of this model (hooks placed there fire).
    own = {id(m) for m in model.modules()}
    assert all(id(m) in own for m in [*adapter.self_attn_modules, *adapter.mlp_modules])
    attn = adapter.self_attn_modules[0]
    assert attn.q_proj.out_features == heads * head_dim and attn.k_proj.out_features == kv_heads * head_dim


def test_prompt_spans_and_forward(tiny, items_for):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    batch = adapter.build_prompt(demos, query, with_answer=True)
    ids = batch.input_ids[0]
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    assert logits.shape == (1, ids.shape[0], model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()

    assert decode(processor, ids, batch.answer_span).strip() == "green zebra"
    assert batch.query_span[1] == ids.shape[0] and batch.answer_span[1] == batch.query_span[1]
    assert batch.demo_span[1] == batch.query_span[0] and batch.prefix_span[1] == batch.demo_span[0]
    query_text = decode(processor, ids, batch.query_span)
    assert "And the color here? Short answer: green zebra" in query_text and "dark blue" not in query_text
    demo_text = decode(processor, ids, batch.demo_span)
    assert demo_text.count("Question:") == 2 and "Short answer: red\n" in demo_text and "dark blue" in demo_text
    assert decode(processor, ids, batch.prefix_span) in ("<s>", "")  # BOS or nothing, no instruction

    labels = batch.labels()
    assert (labels != -100).sum().item() == batch.answer_span[1] - batch.answer_span[0]
    assert torch.equal(labels[0, slice(*batch.answer_span)], ids[slice(*batch.answer_span)])


def test_image_tokens_per_image(tiny, items_for):
    family, model, processor = tiny
    if family == "llama":
        pytest.skip("text-only")
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    batch = adapter.build_prompt(demos, query)
    token_id = tokenizer_of(processor).convert_tokens_to_ids(IMAGE_TOKEN.get(family, "<image>"))
    assert (batch.input_ids == token_id).sum().item() == 3 * TINY_IMAGE_TOKENS[family]
    # The query span starts with the query's image tokens and holds exactly one image.
    q0, q1 = batch.query_span
    assert (batch.input_ids[0, q0:q1] == token_id).sum().item() == TINY_IMAGE_TOKENS[family]


def test_instruction_goes_to_the_prefix(tiny, items_for):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    batch = adapter.build_prompt(demos, query, instruction="Answer in one word.")
    assert batch.answer_span is None
    ids = batch.input_ids[0]
    assert decode(processor, ids, batch.prefix_span).removeprefix("<s>") == "Answer in one word.\n"
    assert decode(processor, ids, batch.query_span).endswith("And the color here? Short answer:")


def test_left_padded_batch_matches_single_prompts(tiny, items_for):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    prompts = [(demos, query), ([], query), (demos[:1], query)]
    batch = adapter.build_prompts(prompts, with_answer=True)
    assert batch.padding_side == "left" and len(batch) == 3
    assert all(span[1] == batch.input_ids.shape[1] for span in batch.answer_spans)  # left padding
    assert batch.demo_spans[1][0] == batch.demo_spans[1][1]  # zero-shot: no demonstrations
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
        for row, (row_demos, row_query) in enumerate(prompts):
            single = adapter.build_prompt(row_demos, row_query, with_answer=True)
            expected = model(**single.model_inputs()).logits[0, slice(*single.answer_span)]
            got = logits[row, slice(*batch.answer_spans[row])]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_right_padding_and_masks(tiny, items_for):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    batch = adapter.build_prompts([(demos, query), ([], query)], with_answer=True, padding_side="right")
    lengths = batch.attention_mask.sum(dim=1).tolist()
    assert [span[1] for span in batch.answer_spans] == lengths
    assert batch.answer_mask.sum().item() == sum(e - s for s, e in batch.answer_spans)
    assert not (batch.query_mask & batch.demo_mask).any()
    assert not (batch.answer_mask & ~batch.query_mask).any()


def test_items_must_match_the_modality(tiny, make_image):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    if family == "llama":
        with pytest.raises(ValueError, match="text-only"):
            adapter.build_prompt([], ICLItem(make_image("red"), "q?", "a"))
    else:
        with pytest.raises(ValueError, match="need an image"):
            adapter.build_prompt([ICLItem(None, "q?", "a")], ICLItem(make_image("red"), "q?"))
    with pytest.raises(ValueError, match="no answer"):
        adapter.build_prompt([], ICLItem(None if family == "llama" else make_image("red"), "q?"), with_answer=True)


def test_tuples_are_accepted_as_items():
    model, tok = build_tiny("llama")
    batch = adapter_for(model, tok).build_prompt([(None, "q1?", "a1")], (None, "q2?", "a2"), with_answer=True)
    assert tok.decode(batch.input_ids[0, slice(*batch.answer_span)]).strip() == "a2"


def test_unknown_model_class_lists_the_families():
    with pytest.raises(UnsupportedModelError, match="Linear") as err:
        adapter_for(nn.Linear(2, 2))
    for family in FAMILIES:
        assert family in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_tiny_family():
    with pytest.raises(ValueError, match="qwen2_vl"):
        build_tiny("gpt2")


def test_seed_and_attention_implementation():
    a, _ = build_tiny("llama", seed=1)
    b, _ = build_tiny("llama", seed=1)
    c, _ = build_tiny("llama", seed=2, attn_implementation="eager")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert adapter_for(c).attn_implementation == "eager"


def test_processor_is_needed_for_prompts():
    model, _tok = build_tiny("llama")
    with pytest.raises(ValueError, match="needs a processor"):
        adapter_for(model).build_prompt([], (None, "q?"))


def test_peft_wrapped_model_gets_its_family_adapter():
    peft = pytest.importorskip("peft")
    model, tok = build_tiny("llama")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapter = adapter_for(wrapped, tok)
    assert adapter.family == "llama" and (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (4, 2, 16)
    assert adapter.decoder_layers is wrapped.get_base_model().model.layers


def test_close_answer_puts_the_separator_in_the_answer_span(tiny, items_for):
    family, model, processor = tiny
    adapter = adapter_for(model, processor)
    demos, query = items_for(family)
    plain = adapter.build_prompts([(demos, query)], with_answer=True, padding_side="right")
    closed = adapter.build_prompts([(demos, query)], with_answer=True, padding_side="right", close_answer=True)
    (a0, a1), (c0, c1) = plain.answer_span, closed.answer_span
    # Same answer start and tokens, then the separator, which ends both the answer span and the query.
    assert c0 == a0 and c1 > a1 and closed.query_span[1] == c1
    assert torch.equal(closed.input_ids[0, c0:a1], plain.input_ids[0, a0:a1])
    assert decode(processor, closed.input_ids[0], (a1, c1)) == "\n"
    with pytest.raises(ValueError, match="close_answer"):
        adapter.build_prompts([(demos, query)], close_answer=True)
