"""Tests of lmmops.models.tokenizer: byte-level BPE built locally, special tokens, determinism."""

from __future__ import annotations

import pytest

from lmmops.models import build_tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos=True)


def test_special_tokens_come_first_and_stay_whole(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("a<image>b", add_special_tokens=False).input_ids
    assert ids.count(3) == 1


def test_any_text_round_trips(tok):
    text = "Question: Wie heißt das Zebra? 12345 ünïcødé ✓ Short answer: Ærø"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_without_bos_nothing_is_added():
    t = build_tokenizer(["<|endoftext|>"], pad_token="<|endoftext|>")
    assert t("hi", add_special_tokens=True).input_ids == t("hi", add_special_tokens=False).input_ids


def test_training_is_deterministic(tok):
    again = build_tokenizer(SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos=True)
    assert again.get_vocab() == tok.get_vocab()


def test_named_tokens_must_be_special():
    with pytest.raises(ValueError, match="not in special_tokens"):
        build_tokenizer(["<pad>"], bos_token="<s>")
