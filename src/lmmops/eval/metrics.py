"""Metrics shared by evaluation and rewards. Pure functions, no I/O.

`vqa_accuracy(prediction, answers)` is the official VQAv2 accuracy of one prediction against the ten
annotator answers, with the official evaluation script's semantics exactly (its quirks included, so
that numbers are comparable with published ones):

- the prediction is always normalised: newlines and tabs become spaces, it is stripped, then the
  punctuation step, then number words to digits, articles dropped and contractions restored (lower case);
- the ground-truth answers get the punctuation step only, and only when the ten are not all identical
  (a unanimous answer is compared as written: "a dog" x 10 never matches, since the prediction loses
  its article; that is the reference's behaviour, kept for comparable numbers);
- for each of the ten answers, acc_i = min(1, #matches among the other nine / 3); the accuracy is the
  mean of the ten.
The punctuation step keeps two quirks of the reference: its period regex `(?!<=\\d)(\\.)(?!\\d)` (a
lookahead where a lookbehind was meant: it strips every period not followed by a digit) and its
`sub(..., re.UNICODE)` call, which passes 32 as the *count* of replacements.

Run the hand-computed cases: `pytest tests/eval/test_metrics.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The reference's punctuation step: drop or space out punctuation, strip periods (see module doc)."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # removed when it touches a space (or the text has a digit,digit anywhere), else spaced out
        drop = (p + " " in text or " " + p in text) or has_digit_comma
        out = out.replace(p, "" if drop else " ")
    return _PERIOD_STRIP.sub("", out, 32)  # the reference passes re.UNICODE (32) as the count


def process_digit_article(text: str) -> str:
    """Lower-case, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Full normalisation of a free-form answer (for comparisons outside the official metric, e.g.
    copy rate): whitespace, punctuation, number words, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQAv2 accuracy in [0, 1] of one prediction against the annotators' answers (normally 10)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    pred = process_digit_article(process_punctuation(pred))
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != i and gt == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def mean_vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)
