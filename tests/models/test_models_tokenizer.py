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


# ----------------------------------------------------------------------------------------------------
# the word-level tokenizer of the project's own base model

WORD_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


@pytest.fixture(scope="module")
def word_tok():
    from lmmops.models.tokenizer import build_word_tokenizer

    corpus = ["Question: Ivan has 7 cards and gets 40 more.\nAnswer:<think>has 7 and gets 40, so 7 + 40 = 47."
              "</think><answer>$\\boxed{47}$</answer>"]
    return build_word_tokenizer(WORD_SPECIALS, corpus, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_word_tokenizer_numbers_start_with_their_own_token(word_tok):
    # A number's first digit keeps the space before it, so "gets 40" is the bigram (gets, ▁4) in the problem
    # and in the worked steps alike; the other digits are tokens of their own.
    pieces = word_tok.convert_ids_to_tokens(word_tok("has 7 and gets 40, so 7 + 40 = 47.").input_ids)
    assert pieces == ["has", "▁7", "▁and", "▁gets", "▁4", "0", ",", "▁so", "▁7", "▁", "+", "▁4", "0", "▁", "=",
                      "▁4", "7", "."]
    # Every digit exists in both forms even when the corpus lacks it, so no number becomes <unk>.
    assert word_tok.unk_token_id not in word_tok(" 9 98 (3)").input_ids


def test_word_tokenizer_round_trips_seen_words_and_tags(word_tok):
    text = "Question: Ivan has 123 cards.\nAnswer:<think>7 + 40 = 47.</think><answer>$\\boxed{-5}$</answer>"
    ids = word_tok(text, add_special_tokens=False).input_ids
    assert word_tok.unk_token_id not in ids
    assert word_tok.decode(ids) == text
    # An unseen word is one <unk>, and the rest still decodes.
    assert word_tok.decode(word_tok("Zebra has 3").input_ids) == "<unk> has 3"
