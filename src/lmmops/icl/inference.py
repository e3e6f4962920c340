"""Batched k-shot ICL generation: demonstrations + query -> a short answer, with or without the demo
feature cache.

    from lmmops.icl.inference import ICLRunner
    runner = ICLRunner(model, processor, cache=DemoFeatureCache.load(...), batch_size=32)
    answers = runner.predict([(demos, query), ...], instruction=None)   # demos/query: VQAItems

Prompts are built by the model family's adapter (`build_prompts`, left padded) with the shared template
`Question: {q} Short answer:`; generation stops at `max_new_tokens`, EOS or the item separator, and the text
is cut by the adapter's `postprocess_answer` (up to the first newline, stripped), then by `answer_cut`.

Decoding options (`Decoding`): `num_beams` (1 = greedy; > 1 = HF beam search, deterministic, no sampling) and
`answer_cut` (regexes; the answer is cut before the first match of any, then stripped). The default is greedy
with no cut: the embedded default model answers in one or two words that end with EOS, and beam search
multiplies the decoding cost by the beams. `LIVE_ANSWER_CUT` with 3 beams is the LIVE reference evaluation's
setting, for real checkpoints that ramble. A stage sets them from its config (`num_beams`, `answer_cut`),
explicitly on its runners and with `decoding(...)` around library code that builds its own runner.

With a cache, the vision encoder runs only for images the cache does not hold (the queries, in one batched
call per prompt batch); the support images' features are read from the cache and written into the token
embeddings (`adapter.embed_with_image_features`), and the model is called with `inputs_embeds`. The two
paths give the same logits (tests/icl/test_icl_eval.py). `vision_images_encoded` counts the images sent
through the vision encoder by this runner.

Prompts are processed in order of length within a batch window so that padding stays small; predictions
come back in the caller's order.

Run: `python -m pytest tests/icl/test_icl_eval.py -q`; benchmark: `python benchmarks/icl_eval.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from lmmops.data.schemas import VQAItem
from lmmops.icl.cache import DemoFeatureCache, image_key
from lmmops.models import ICLItem, adapter_for
from lmmops.models.prompt import SEPARATOR

Prompt = tuple[Sequence[VQAItem], VQAItem]

# The LIVE reference evaluation's answer cut: the text before the first "Question", "Answer" or "Short", then
# the text before the first ", ".
LIVE_ANSWER_CUT: tuple[str, ...] = (r"Question|Answer|Short", r", ")


def compile_answer_cut(rules: Sequence[str], *, key: str = "answer_cut") -> tuple[re.Pattern[str], ...]:
    """The cut rules as compiled regexes; a ValueError naming `key` for a rule that does not compile or that
    matches the empty string (it would cut every answer to nothing)."""
    if isinstance(rules, str):
        raise ValueError(f"{key}: expected a list of regexes, got the string {rules!r}")
    out = []
    for i, rule in enumerate(rules):
        try:
            pattern = re.compile(rule)
        except (re.error, TypeError) as exc:
            raise ValueError(f"{key}[{i}]: {rule!r} is not a valid regex: {exc}") from exc
        if pattern.fullmatch(""):
            raise ValueError(f"{key}[{i}]: {rule!r} matches the empty string (it would cut every answer to nothing)")
        out.append(pattern)
    return tuple(out)


def cut_answer(text: str, rules: Sequence[str | re.Pattern[str]]) -> str:
    """`text` up to the first match of any rule (the whole text when none matches), stripped."""
    end = len(text)
    for rule in rules:
        found = re.search(rule, text)
        if found is not None:
            end = min(end, found.start())
    return text[:end].strip()


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded: `num_beams` (1 = greedy) and the `answer_cut` rules (regexes)."""

    num_beams: int = 1
    answer_cut: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        compile_answer_cut(self.answer_cut)  # a string, a bad regex or one matching "" is an error here
        object.__setattr__(self, "answer_cut", tuple(self.answer_cut))


_DECODING: ContextVar[Decoding | None] = ContextVar("lmmops_icl_decoding", default=None)


def current_decoding() -> Decoding:
    """The decoding that runners built without explicit options use (greedy, no cut, unless `decoding` set one)."""
    return _DECODING.get() or Decoding()


@contextmanager
def decoding(num_beams: int = 1, answer_cut: Sequence[str] = ()) -> Iterator[Decoding]:
    """Inside the block, every `ICLRunner` built without explicit `num_beams` / `answer_cut` decodes so (for code
    that builds its own runner, e.g. `lmmops.vectors.train.evaluate_vectors`); restored on exit."""
    scoped = Decoding(num_beams, tuple(answer_cut))
    token = _DECODING.set(scoped)
    try:
        yield scoped
    finally:
        _DECODING.reset(token)


class ICLRunner:
    """Short-answer generation (greedy or beam search, then the answer cut) for batches of (demos, query) prompts.

    `num_beams` / `answer_cut` None: the current `decoding(...)` scope's (greedy, no cut outside any)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        cache: DemoFeatureCache | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 8,
        num_beams: int | None = None,
        answer_cut: Sequence[str] | None = None,
        progress: bool = True,
    ):
        scoped = current_decoding()
        self.decoding = Decoding(scoped.num_beams if num_beams is None else num_beams,
                                 scoped.answer_cut if answer_cut is None else tuple(answer_cut))
        self._cut = compile_answer_cut(self.decoding.answer_cut)
        self.model, self.processor = model, processor
        self.adapter = adapter_for(model, processor)
        if cache is not None:
            self.adapter._require_feature_cache()
        self.cache, self.batch_size, self.max_new_tokens, self.progress = cache, batch_size, max_new_tokens, progress
        self.vision_images_encoded = 0
        self._images: dict[Path, Image.Image] = {}
        tok = getattr(processor, "tokenizer", processor)
        self.tokenizer = tok
        stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
        sep = tok(SEPARATOR, add_special_tokens=False)["input_ids"]
        if len(sep) == 1:  # stop at the item separator when it is one token
            stop.append(sep[0])
        self.stop_ids = stop
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (stop[0] if stop else 0)

    def _image(self, path: Path) -> Image.Image:
        if path not in self._images:
            with Image.open(path) as im:
                self._images[path] = im.convert("RGB")
        return self._images[path]

    def _item(self, it: VQAItem, with_answer: bool) -> ICLItem:
        return ICLItem(self._image(it.image_path), it.question, it.multiple_choice_answer if with_answer else None)

    def _inputs_embeds(self, batch_items: list[list[VQAItem]], inputs: dict[str, Any]) -> torch.Tensor:
        """Token embeddings with every image's features: cached ones read, the rest encoded in one call
        (from the pixel values the prompt batch already holds, where the family allows)."""
        assert self.cache is not None
        order = [it.image_path for row in batch_items for it in row]
        # Positions of the uncached images among the images whose pixels the batch holds: all of them, or only
        # the uncached ones where the adapter left the cached images out of the image processing.
        pixel_rows = {p: i for i, p in enumerate(
            p for p in order if not (self.adapter.skips_unneeded_pixels and image_key(p) in self.cache))}
        first: dict[str, int] = {}
        for position, p in enumerate(order):
            if image_key(p) not in self.cache:
                first.setdefault(image_key(p), position)
        fresh: dict[str, torch.Tensor] = {}
        if first:
            positions = list(first.values())
            feats = self.adapter.batch_image_features(inputs, [pixel_rows[order[i]] for i in positions],
                                                      [self._image(order[i]) for i in positions])
            self.vision_images_encoded += len(positions)
            fresh = dict(zip(first, feats, strict=True))
        features = [fresh[k] if k in fresh else self.cache.get(k) for k in map(image_key, order)]
        return self.adapter.embed_with_image_features(inputs["input_ids"], features)  # type: ignore[arg-type]

    @torch.no_grad()
    def _generate(self, prompts: Sequence[Prompt], instruction: str | None) -> list[str]:
        specs = [([self._item(d, True) for d in demos], self._item(q, False)) for demos, q in prompts]
        # With the cache, cached images need no pixel values (their features are read, not encoded).
        need = None if self.cache is None else [
            [image_key(it.image_path) not in self.cache for it in [*demos, q]] for demos, q in prompts]
        batch = self.adapter.build_prompts(specs, instruction=instruction, padding_side="left", need_pixels=need)
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False,
                                  "num_beams": self.decoding.num_beams, "eos_token_id": self.stop_ids,
                                  "pad_token_id": self.pad_id}
        if self.cache is not None:
            rows = [[*demos, q] for demos, q in prompts]
            embeds = self._inputs_embeds(rows, batch.inputs)
            out = self.model.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask, **kwargs)
            new = out  # generate from inputs_embeds returns only the new tokens
        else:
            n_images = sum(len(demos) + 1 for demos, _ in prompts)
            self.vision_images_encoded += n_images
            out = self.model.generate(**batch.model_inputs(), **kwargs)
            new = out[:, batch.input_ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_answer(self.adapter.postprocess_answer(t), self._cut) for t in texts]

    def predict(self, prompts: Sequence[Prompt], *, instruction: str | None = None,
                desc: str = "icl") -> list[str]:
        """Short answers for every (demos, query) prompt, in the given order."""
        was_training = self.model.training
        self.model.eval()
        try:
            # Sort by demo count (prompt length) so that each batch pads little; restore order after.
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
            answers: list[str] = [""] * len(prompts)
            starts = range(0, len(order), self.batch_size)
            for b in tqdm(starts, desc=desc, disable=not self.progress, leave=False, mininterval=1.0):
                chunk = order[b : b + self.batch_size]
                for i, a in zip(chunk, self._generate([prompts[i] for i in chunk], instruction), strict=True):
                    answers[i] = a
            return answers
        finally:
            self.model.train(was_training)
