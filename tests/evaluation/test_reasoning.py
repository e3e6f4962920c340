"""Completions never contain a non-text special token, even when the model prefers one and samples at T = 1."""

from __future__ import annotations

import torch

from lmmops.evaluation.reasoning import completion_ids, generate_completions
from lmmops.models import build_tiny, non_text_token_ids


def _prefer(model: torch.nn.Module, token_id: int, boost: float = 30.0) -> None:
    """Make `token_id` the model's overwhelming choice at every position (a hook on the output logits)."""

    def hook(_module, _inputs, logits):
        logits[..., token_id] += boost
        return logits

    model.get_output_embeddings().register_forward_hook(hook)


def _before_stop(ids: torch.Tensor, stop: int) -> list[int]:
    row = ids.tolist()
    return row[: row.index(stop)] if stop in row else row


def test_non_text_token_ids_keep_the_stop_token():
    _, processor = build_tiny("llava")
    tok = processor.tokenizer
    ids = non_text_token_ids(tok, keep=[tok.eos_token_id])
    assert tok.convert_tokens_to_ids("<image>") in ids
    assert tok.pad_token_id in ids
    assert tok.eos_token_id not in ids
    assert set(ids) | {tok.eos_token_id} == set(tok.all_special_ids)


def test_sampled_completions_never_hold_the_image_token():
    model, processor = build_tiny("llava")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    _prefer(model, image_id)
    prompts = ["what is 2 + 3 ?", "count the red squares"]
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    torch.manual_seed(0)
    plain = model.generate(**enc, max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert image_id in plain[:, enc["input_ids"].shape[1]:].tolist()[0]  # the hook works: unguarded, it is sampled

    torch.manual_seed(0)
    sampled = completion_ids(model, processor, prompts, max_new_tokens=6, temperature=1.0, samples=4)
    greedy = completion_ids(model, processor, prompts, max_new_tokens=6)
    assert len(sampled) == 8 and len(greedy) == 2
    banned = set(non_text_token_ids(tok, keep=[tok.eos_token_id]))
    for ids in [*sampled, *greedy]:
        assert not banned & set(_before_stop(ids, tok.eos_token_id))
    texts = generate_completions(model, processor, prompts, max_new_tokens=6, temperature=1.0, samples=2)
    assert len(texts) == 4 and all("<image>" not in t for t in texts)
