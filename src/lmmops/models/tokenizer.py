"""Small byte-level BPE tokenizers built locally, for tiny models and the project's own base model.

`build_tokenizer` trains a byte-level BPE (the `tokenizers` library) on a short corpus and wraps it in
`transformers.PreTrainedTokenizerFast`, with the special tokens of a model family in front of the
vocabulary (ids 0..n-1, in the order given). Byte-level means any text encodes and decodes exactly, so
prompts with words the corpus never saw still round-trip (they just take more tokens). Training is
deterministic for a given corpus and vocabulary size, and takes milliseconds.

Run: `python -c "from lmmops.models.tokenizer import build_tokenizer; print(build_tokenizer(['<pad>']))"`.

Departures from the references: real checkpoints ship their own (SentencePiece or tiktoken-style BPE)
tokenizers with vocabularies of 32k-150k; the tiny tokenizers here keep the same special tokens and the
same BOS/EOS conventions but a vocabulary of a few hundred, so tiny models stay small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Words of the prompt template and of the synthetic VQA/reasoning corpora, so that they take one or two
# tokens each. Anything else still encodes, byte by byte.
DEFAULT_CORPUS: tuple[str, ...] = (
    "Question: What is in the image? Short answer: a cat",
    "Question: What color is the shape? Short answer: red",
    "Question: What shape is it? Short answer: circle",
    "Question: Where is the object? Short answer: left",
    "Question: How many objects are there? Short answer: 2",
    "Instruction: provide an answer to the question. Use the image to answer.",
    "red green blue yellow purple orange black white gray brown pink",
    "circle square triangle star cross ring diamond heart",
    "left right top bottom center up down middle corner",
    "yes no one two three four five six seven eight nine ten zero",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100",
    "the a an of to and is are in on at with what which how many where who why when",
    "dog cat bird car bus tree house person man woman ball table chair",
    "<think> Let me think step by step. </think> <answer> The answer is \\boxed{42} </answer>",
    "Solve the problem. First reason, then give the final answer.",
    "+ - * / = ( ) , . : ; ? ! ' \"",
)


def build_tokenizer(
    special_tokens: Sequence[str],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    add_bos: bool = False,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 384,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it for transformers.

    `special_tokens` get ids 0..n-1 in the given order and are never split; `bos_token`, `eos_token`,
    `pad_token` and `unk_token` must be among them (when given). With `add_bos` the tokenizer prepends
    BOS when `add_special_tokens=True` (Llama/Mistral convention); without it nothing is added (Qwen).
    Every special token that is not one of the named ones becomes an extra special token.
    """
    _check_special_tokens(special_tokens, (bos_token, eos_token, pad_token, unk_token), add_bos, bos_token)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError("special_tokens has duplicates")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(DEFAULT_CORPUS if corpus is None else corpus), trainer=trainer)
    return _wrap(tok, special_tokens, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                 unk_token=unk_token, add_bos=add_bos, model_max_length=model_max_length,
                 default_post_processor=processors.ByteLevel(trim_offsets=False))


# ----------------------------------------------------------------------------------------------------
# word-level tokenizers (the project's own base model)

# Added (non-special) tokens of the reasoning format: one token each, and kept by decode(skip_special_tokens).
REASONING_TAGS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
WORD_MARK = "\u2581"  # "▁": marks a word that follows a space (Metaspace), so decoding restores spaces exactly


def word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Newlines alone, words with their leading space (`▁word`), punctuation alone, digits one by one, the
    first digit of a number after a space keeping the space (`▁4`, `7` for " 47").

    Why the space stays on the first digit: a number then starts with its own token instead of a `▁` shared
    by every number, so "gets ▁4" is a bigram an induction head can copy from the problem into the worked
    steps. With a bare `▁` the bootstrap model copied operands wrongly ("has 7 ... gets 40" -> "5 + 30").
    """
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=WORD_MARK, prepend_scheme="never", split=True),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Split(Regex(f"{WORD_MARK}?[0-9]"), behavior="isolated"),
        ]
    )


def build_word_tokenizer(
    special_tokens: Sequence[str],
    corpus: Iterable[str],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str = "<unk>",
    add_bos: bool = False,
    added_tokens: Sequence[str] = REASONING_TAGS,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word, punctuation mark and digit of `corpus`.

    Why: with a few hundred whole words, every ICL answer is one or two tokens and sequences are short, so
    a tiny model trains in minutes. Digits are single tokens (arithmetic works digit by
    digit; a number's first digit carries its leading space) and every printable ASCII character is in the
    vocabulary, so only unseen *words* become `unk_token`. Words carry their leading space (`▁word`), so
    `decode` restores the text exactly, including the no-space joins the reasoning format needs
    (`</think><answer>`). `special_tokens` get ids 0..n-1 in order; `added_tokens` (the reasoning tags)
    are single, non-special tokens.
    """
    _check_special_tokens(special_tokens, (bos_token, eos_token, pad_token, unk_token), add_bos, bos_token)
    pre = word_pre_tokenizer()
    words: set[str] = {chr(c) for c in range(33, 127)} | {WORD_MARK + d for d in "0123456789"} | {WORD_MARK, "\n"}
    for text in corpus:
        for piece in added_tokens:
            text = text.replace(piece, "\n")  # the tags split words like a newline does (no ▁ mark)
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {t: i for i, t in enumerate(special_tokens)}
    for w in sorted(words - set(vocab)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement=WORD_MARK, prepend_scheme="never", split=True)
    tok.add_special_tokens(list(special_tokens))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    return _wrap(tok, special_tokens, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                 unk_token=unk_token, add_bos=add_bos, model_max_length=model_max_length)


def _check_special_tokens(special_tokens: Sequence[str], named: Sequence[str | None], add_bos: bool,
                          bos_token: str | None) -> None:
    missing = [t for t in named if t is not None and t not in special_tokens]
    if missing:
        raise ValueError(f"named special tokens {missing} are not in special_tokens")
    if add_bos and bos_token is None:
        raise ValueError("add_bos=True needs a bos_token")


def _wrap(
    tok: Tokenizer,
    special_tokens: Sequence[str],
    *,
    bos_token: str | None,
    eos_token: str | None,
    pad_token: str | None,
    unk_token: str | None,
    add_bos: bool,
    model_max_length: int,
    default_post_processor: Any = None,
) -> PreTrainedTokenizerFast:
    """BOS post-processing (when asked) and the transformers wrapper; the non-named specials become extras."""
    if add_bos:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    elif default_post_processor is not None:
        tok.post_processor = default_post_processor
    named = {bos_token, eos_token, pad_token, unk_token}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        extra_special_tokens=[t for t in special_tokens if t not in named],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def non_text_token_ids(tokenizer: Any, keep: Iterable[int] = ()) -> list[int]:
    """The ids of every special token that is not text (image placeholders, padding, bos, unk, chat markers),
    except `keep` (the stop ids a completion must still be able to emit).

    Generation passes them as `suppress_tokens`: a sampled `<image>` inside a completion would make the next
    forward over prompt + completion fail (image tokens without image features), and none of them is part of an
    answer."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return sorted(special - {int(k) for k in keep if k is not None})

