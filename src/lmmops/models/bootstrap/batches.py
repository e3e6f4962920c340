"""Pre-tokenised training rows of the bootstrap trainer and the batches drawn from them.

`encode` tokenises every VQA item and preprocesses every image once (data files and generated figures);
`interleaved_row` (ICL episodes, packed VQA and describe questions), `reasoning_row` (packed reasoning examples:
text, multimodal, or figure readings) and `drill_row` (arithmetic equations) build rows from those ids without
the processor; `sample_batch` draws one step's rows by the
shares of the config; `sub_batches` and `collate` turn them into padded tensors. The ids are the ones the
shared prompt template gives (`lmmops.models.prompt`): `check_template` compares an episode with
`LlavaAdapter.build_prompts` at the start of training.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lmmops.config import BootstrapConfig
from lmmops.data.schemas import VQAItem
from lmmops.models.adapters import _answer_token_ids, adapter_for
from lmmops.models.bootstrap.corpus import Corpora, open_image, reasoning_prompt
from lmmops.models.bootstrap.figures import reading_completion, reading_prompt, reasoning_completion
from lmmops.models.prompt import SEPARATOR, ICLItem, item_text


@dataclass
class Row:
    ids: list[int]
    labels: list[bool]  # True where the loss applies
    images: list[int]  # indices into the pixel table, in order of the image tokens
    group: str  # "icl" | "vqa" | "describe" | "reasoning" | "mm_reasoning" | "perception" | "arithmetic"
    long: bool = False  # a long ICL episode: forwarded in a sub-batch of its own (see `sub_batches`)


@dataclass
class Encoded:
    """Token ids and pixel tensors of every training item, computed once."""

    pixels: torch.Tensor  # (n_images, 3, 32, 32)
    image_index: dict[Path | str, int]  # a data file's path, or "figure:<pool>:<i>" for a generated figure
    item_ids: dict[int, tuple[list[int], int]]  # VQA question_id -> (text ids, answer length)
    bos: int
    eos: int
    sep: int
    image_tokens: list[int]


def encode(corpora: Corpora, processor: LlavaProcessor, image_seq_length: int) -> Encoded:
    tok = processor.tokenizer
    vqa_items = corpora.vqa + corpora.describe + [it for items in corpora.icl.values() for it in items]
    paths = sorted({it.image_path for it in vqa_items})
    figures = [(f"figure:{pool}:{i}", fig.problem.image) for pool in ("perception", "reasoning")
               for i, fig in enumerate(getattr(corpora.figures, pool))]
    images = [open_image(p) for p in paths] + [image for _, image in figures]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    item_ids = {}
    for it in vqa_items:
        icl_item = ICLItem(None, it.question, it.multiple_choice_answer)
        ids = tok(item_text(icl_item, with_answer=True), add_special_tokens=False)["input_ids"]
        item_ids[it.question_id] = (ids, len(_answer_token_ids(tok, icl_item)))
    return Encoded(
        pixels=pixels,
        image_index={p: i for i, p in enumerate([*paths, *(key for key, _ in figures)])},
        item_ids=item_ids,
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        sep=tok.convert_tokens_to_ids(SEPARATOR),
        image_tokens=[tok.convert_tokens_to_ids("<image>")] * image_seq_length,
    )


def interleaved_row(enc: Encoded, items: Sequence[VQAItem], group: str) -> Row:
    """BOS, then per item its image tokens and `Question: q Short answer: a`, separated by newlines.

    The loss covers every answer and the separator after it: with the causal mask an 8-demo episode trains
    0..8-shot prediction at once.
    """
    row = Row([enc.bos], [False], [], group)
    for j, it in enumerate(items):
        ids, n_answer = enc.item_ids[it.question_id]
        row.ids += enc.image_tokens + ids
        row.labels += [False] * (len(enc.image_tokens) + len(ids) - n_answer) + [True] * n_answer
        row.images.append(enc.image_index[it.image_path])
        if j < len(items) - 1:
            # The separator after an answer is under the loss too: the model learns where a short answer
            # ends, so that free generation stops there (ICL inference stops at the separator).
            row.ids.append(enc.sep)
            row.labels.append(True)
    return row


def reasoning_row(enc: Encoded, tok: Any, examples: Sequence[tuple[str, str, Path | str | None]], group: str) -> Row:
    """One or more (prompt, completion, image) examples packed into one row, each as BOS, prompt (image
    tokens first when there is an image), then completion + EOS under the loss.

    Why pack: ICL episodes set the row length (~260 tokens at 16 shots); one reasoning trace is ~75, and
    padding it to the episode length would spend most of the row's compute on pad tokens. Each packed
    example restarts with BOS, the way a single prompt starts at inference.
    """
    row = Row([], [], [], group)
    for prompt, completion, image in examples:
        p_ids = tok(prompt.removeprefix("<image>"), add_special_tokens=False)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [enc.eos]
        head = [enc.bos] + (enc.image_tokens if image is not None else []) + p_ids
        row.ids += head + c_ids
        row.labels += [False] * len(head) + [True] * len(c_ids)
        row.images += [enc.image_index[image]] if image is not None else []
    return row


def drill_row(enc: Encoded, tok: Any, equations: Sequence[str]) -> Row:
    """BOS, then " so a + b = c." per equation, in the traces' own wording; the loss covers each result and its
    full stop only (the operands are random draws: nothing to learn there)."""
    text, spans = "", []
    for eq in equations:
        lhs, result = eq.split(" = ")
        text += f" so {lhs} ="
        spans.append((len(text), len(text) + 1 + len(result)))  # " 15." (the space starts the first digit's token)
        text += f" {result}"
    e = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [any(a <= start and end <= b for a, b in spans) for start, end in e["offset_mapping"]]
    return Row([enc.bos, *e["input_ids"]], [False, *labels], [], "arithmetic")


def sample_batch(rng: np.random.Generator, corpora: Corpora, enc: Encoded, tok: Any, cfg: BootstrapConfig
                 ) -> list[Row]:
    """The rows of one training step, by the shares of `cfg`; long ICL episodes (if any) come last."""
    n_icl = round(cfg.batch_size * cfg.icl_share) if corpora.icl else 0
    n_long = cfg.long_icl_rows if corpora.icl else 0
    per_long = max(1, cfg.long_max_shots // cfg.max_shots)  # ordinary episodes one long episode replaces
    if n_long * per_long > n_icl:
        raise ValueError(f"bootstrap: long_icl_rows {cfg.long_icl_rows} take the place of {n_long * per_long} ICL "
                         f"episodes, but icl_share gives only {n_icl} rows of a batch of batch_size "
                         f"{cfg.batch_size}")
    n_vqa = round(cfg.batch_size * cfg.vqa_share) if corpora.vqa else 0
    n_mm = round(cfg.batch_size * cfg.multimodal_reasoning_share) if corpora.figures.reasoning else 0
    n_describe = round(cfg.batch_size * cfg.describe_share) if corpora.describe else 0
    n_drill = round(cfg.batch_size * cfg.arithmetic_drill_share) if corpora.drill else 0
    n_text = cfg.batch_size - n_icl - n_vqa - n_mm - n_describe - n_drill
    if n_text < 0:
        raise ValueError(f"bootstrap: icl_share + vqa_share + multimodal_reasoning_share + describe_share + "
                         f"arithmetic_drill_share take {cfg.batch_size - n_text} rows of a batch of "
                         f"batch_size {cfg.batch_size}; the shares must sum to at most 1")
    tasks = list(corpora.icl)
    rows: list[Row] = []

    def icl_episode(shots: int) -> Row:
        pool = corpora.icl[tasks[int(rng.integers(len(tasks)))]]
        picks = rng.choice(len(pool), size=min(shots + 1, len(pool)), replace=False)
        return interleaved_row(enc, [pool[i] for i in picks], "icl")

    for _ in range(n_icl - n_long * per_long):
        rows.append(icl_episode(cfg.max_shots))
    for _ in range(n_vqa):
        picks = rng.choice(len(corpora.vqa), size=min(cfg.vqa_pack, len(corpora.vqa)), replace=False)
        rows.append(interleaved_row(enc, [corpora.vqa[i] for i in picks], "vqa"))
    for _ in range(n_describe):
        picks = rng.choice(len(corpora.describe), size=min(cfg.vqa_pack, len(corpora.describe)), replace=False)
        rows.append(interleaved_row(enc, [corpora.describe[i] for i in picks], "describe"))
    for _ in range(n_mm):
        picks = rng.integers(len(corpora.figures.reasoning), size=cfg.multimodal_pack)
        rows.append(reasoning_row(enc, tok, [
            (reasoning_prompt(corpora.figures.reasoning[i].problem.question, with_image=True),
             reasoning_completion(corpora.figures.reasoning[i].problem), f"figure:reasoning:{i}")
            for i in map(int, picks)], "mm_reasoning"))
    for _ in range(n_drill):
        picks = rng.integers(len(corpora.drill), size=cfg.arithmetic_drill_pack)
        rows.append(drill_row(enc, tok, [corpora.drill[int(i)] for i in picks]))
    for _ in range(n_text):
        picks = rng.integers(len(corpora.math), size=cfg.reasoning_pack)
        rows.append(reasoning_row(enc, tok, [(reasoning_prompt(m.problem), m.solution or "", None)
                                             for m in (corpora.math[int(i)] for i in picks)], "reasoning"))
    # Perception rows come on top of batch_size, after the rows above, so that those stay what they were.
    rows += perception_rows(rng, corpora, enc, tok, cfg)
    # Drawn last so that the ordinary rows are the same whether or not long episodes are configured.
    for _ in range(n_long):
        row = icl_episode(cfg.long_max_shots)
        row.long = True
        rows.append(row)
    return rows


def perception_rows(rng: np.random.Generator, corpora: Corpora, enc: Encoded, tok: Any, cfg: BootstrapConfig
                    ) -> list[Row]:
    """`cfg.perception_rows` rows, each reading `cfg.perception_pack` generated figures ("What does the figure
    show?" -> its values)."""
    perception = corpora.figures.perception
    rows = []
    for _ in range(cfg.perception_rows if perception else 0):
        picks = rng.choice(len(perception), size=min(cfg.perception_pack, len(perception)), replace=False)
        rows.append(reasoning_row(enc, tok, [(reading_prompt(), reading_completion(perception[i].problem),
                                              f"figure:perception:{i}") for i in map(int, picks)], "perception"))
    return rows


def sub_batches(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows split into the ordinary ones and the long ICL episodes: each sub-batch is padded to its own
    widest row (a 16-shot episode is twice as wide as the rest)."""
    return [part for part in ([r for r in rows if not r.long], [r for r in rows if r.long]) if part]


def collate(rows: Sequence[Row], enc: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; pixel values in the order of the image tokens (as Llava scatters them)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
        loss_mask[i, : len(r.ids)] = torch.tensor(r.labels)
    batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}
    images = [j for r in rows for j in r.images]
    if images:
        batch["pixel_values"] = enc.pixels[images]
    return batch


def check_template(corpora: Corpora, enc: Encoded, model: LlavaForConditionalGeneration,
                   processor: LlavaProcessor) -> None:
    """The pre-tokenised episode must equal what the adapter builds with the processor (same template)."""
    if not corpora.icl:
        return
    items = next(iter(corpora.icl.values()))[:3]
    icl = [ICLItem(open_image(it.image_path), it.question, it.multiple_choice_answer) for it in items]
    batch = adapter_for(model, processor).build_prompts([(icl[:-1], icl[-1])], with_answer=True,
                                                        padding_side="right")
    row = interleaved_row(enc, items, "icl")
    if batch.input_ids[0].tolist() != row.ids:
        raise AssertionError(f"pre-tokenised episode differs from build_prompts:\n{row.ids}\n{batch.input_ids[0]}")
    if not torch.allclose(batch.inputs["pixel_values"], enc.pixels[row.images]):
        raise AssertionError("pre-computed pixel values differ from the processor's")
    s, e = batch.answer_span
    if [i for i, lab in zip(row.ids, row.labels, strict=True) if lab][-(e - s):] != row.ids[s:e]:
        raise AssertionError("query answer span differs from build_prompts")
