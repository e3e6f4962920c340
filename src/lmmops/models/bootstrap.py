"""Train the embedded default base model from scratch on the synthetic corpora, and evaluate it.

What it does: builds a tiny `LlavaForConditionalGeneration` with a word-level tokenizer whose vocabulary
comes from the training corpora, pre-tokenises the data layer's train splits once, and trains on a
mixture of (1) multimodal ICL episodes of the nine ICL task families (8 demonstrations + 1 query of one
task, loss on every answer), (2) ordinary VQA questions, (3) "describe" rows: the data layer's VQA
questions ("What color is the circle?") asked about the single-object ICL images, labelled from the
generator's scene sidecar (direct supervision of the vision path), (4) DeepScaler reasoning traces
`<think>...</think><answer>$\\boxed{...}$</answer>` given the problem, and (5) multimodal reasoning rows
(MultiMath/VerMulti) with a short fixed trace, so that the format is also learned with an image present. Training
state is checkpointed under `<checkpoint_dir>/<hash of config and data>` and resumed from there.
`evaluate_icl` and `evaluate_reasoning` are the evaluations of record (later stages reuse them).

How to run: `lmmops bootstrap` (the stage in `lmmops.stages.models`), or from Python:
    result = train(BootstrapConfig(), Path("data"), Path("checkpoints/bootstrap"))
    evaluate_icl(result.model, result.processor, load_vqa(Path("data"), "test"))

Model choice: LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower -> MLP projector -> Llama decoder),
the simplest image path of the covered families (4 image tokens per 32x32 image, no perceiver or tiling),
with an adapter for every later stage. Default size: Llama 4 layers x 128 (GQA 4/2 heads, MLP 256), CLIP 2
layers x 64, a word-level vocabulary of ~330: about 0.81M parameters, small enough for ~1,400 steps of 32 rows
in about ten minutes on 2 cores (steps, not capacity, are what a run this short lacks).

The mixture and why (each choice was measured on val or on an independently generated tuning set, never on
the test split: docs/experiments.md has the numbers):
- ICL episodes of the nine task families (the "en" lexicon's twin "alias" answers two values with words of
  its own, so a demo may fit both twins and the accuracy-vs-shots curve rises as telling demos come in), with
  `long_icl_rows` 16-demo episodes per batch in place of 8-demo ones, because the vector stages distil a
  16-shot teacher and a model trained on 8 demos only degrades past them; their loss group weighs
  `icl_loss_weight` against each other group's 1;
- "describe" rows supervise the vision path directly; ordinary VQA rows;
- reasoning traces restate each quantity with the word before it ("has 7 and gets 40, so 7 + 40 = 47."), and
  the tokenizer keeps a number's first digit with its space, so operands are copied right; 40,000 extra
  generated problems (the test problems left out) weigh the arithmetic levels; the arithmetic drill rows
  (`arithmetic_drill_share`: 12 trace equations per row, loss on the results) teach the facts themselves.
Thread count alone changes float reductions and so the training trajectory (README, "Reproducibility").

Departures from the real thing: real LLaVA starts from pretrained CLIP and Llama weights and trains in two
phases (projector alignment, then instruction tuning); here everything is trained from scratch in one
phase on a few thousand synthetic items. The tokenizer is word-level (digits one by one) instead of
SentencePiece: answers are one or two tokens, so training is fast; unseen words become `<unk>`. The image
processor normalises with the training images' own mean/std instead of CLIP's (see `image_stats`: with
CLIP's statistics the decoder did not learn to read the images within the time budget).
Prompts follow the shared template of `lmmops.models.prompt` and are pre-tokenised for speed; `train`
checks at start that its token ids equal what `LlavaAdapter.build_prompts` produces for the same episode.
ICL accuracy is measured by teacher forcing: a query counts as correct when greedy decoding would emit
exactly its answer tokens (the argmax at every answer position), which needs one forward pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from lmmops.config import BootstrapConfig, to_dict
from lmmops.data.icl_tasks import ICL_TASKS, ICL_VOCABULARY, get_icl_task, tasks_sharing_vocabulary
from lmmops.data.loaders import load_deepscaler, load_multimath, load_vermulti, load_vqa, load_vqa_scenes
from lmmops.data.schemas import MathItem, MultimodalItem, VQAItem
from lmmops.eval.analysis import split_by_mask
from lmmops.models.adapters import _answer_token_ids, adapter_for
from lmmops.models.prompt import SEPARATOR, ICLItem, item_text
from lmmops.models.tokenizer import build_word_tokenizer

IMAGE_SIZE = 32
PATCH = 16
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# The multimodal rows have no worked solution; their trace only teaches the format with an image present.
MULTIMODAL_THINK = "I read the figure and work out the answer."

# Keys of BootstrapConfig that do not change what is trained (left out of the checkpoint hash).
_BOOKKEEPING = {"out_dir", "checkpoint_dir", "registered_name", "checkpoint_every", "log_every", "threads"}


def reasoning_prompt(problem: str, *, with_image: bool = False) -> str:
    """The prompt of a reasoning row; the completion `<think>...</think><answer>...</answer>` follows directly."""
    return ("<image>" if with_image else "") + f"Question: {problem.strip()}\nAnswer:"


# ----------------------------------------------------------------------------------------------------
# data


@dataclass
class Corpora:
    """One split of the data layer, as the bootstrap uses it."""

    icl: dict[str, list[VQAItem]]  # ICL task name -> items
    vqa: list[VQAItem]  # ordinary VQA questions
    math: list[MathItem]  # DeepScaler rows
    multimodal: list[MultimodalItem]  # MultiMath + VerMulti rows
    describe: list[VQAItem] = field(default_factory=list)  # attribute questions on the ICL images
    drill: list[str] = field(default_factory=list)  # arithmetic equations of the generator's traces
    images: dict[Path, Image.Image] = field(default_factory=dict)  # generated items' images (in memory)
    scenes: dict[int, Any] = field(default_factory=dict)  # image id -> the generator's scene (synthetic data only)
    shared_icl: dict[str, list[VQAItem]] = field(default_factory=dict)  # see `shared_icl_pools`

    def image(self, path: Path) -> Image.Image:
        return self.images[path] if path in self.images else open_image(path)


def describe_items(icl: dict[str, list[VQAItem]], scenes: dict[int, Any]) -> list[VQAItem]:
    """Plain attribute questions about each single-object ICL image, in the data layer's VQA wording.

    Why: the ICL answer depends on the image only through a task inferred from the demonstrations, so early
    in training the decoder learns the task's lexicon and ignores the image (loss stuck at ln 4). These
    0-shot questions ("What color is the circle?") supervise the vision path directly, like LLaVA's
    alignment data, and break that plateau. Labels come from the generator's scene sidecar.
    """
    out = []
    for item in (it for items in icl.values() for it in items):
        scene = scenes.get(item.image_id)
        if scene is None or len(scene.objects) != 1:
            continue
        o = scene.objects[0]
        questions = [(f"What color is the {o.shape}?", o.colour), (f"What shape is the {o.colour} object?", o.shape),
                     (f"Where is the {o.colour} {o.shape}?", o.position)]
        for k, (question, answer) in enumerate(questions):
            out.append(dataclasses.replace(item, question_id=-(item.question_id * 10 + k), question=question,
                                           question_type="describe", multiple_choice_answer=answer, answers=()))
    return out


def load_corpora(data_dir: Path, split: str) -> Corpora:
    vqa = load_vqa(data_dir, split)
    icl: dict[str, list[VQAItem]] = defaultdict(list)
    for item in vqa:
        if item.is_icl:
            icl[item.question_type].append(item)
    multimodal = load_multimath(data_dir, split)
    for subset in ("geo", "perce_reason"):
        multimodal += load_vermulti(data_dir, subset, split)
    try:
        scenes = load_vqa_scenes(data_dir, split)
    except (OSError, ValueError):  # real VQA data has no scene sidecar: no describe rows
        scenes = {}
    return Corpora(
        icl=dict(sorted(icl.items())),
        vqa=[it for it in vqa if not it.is_icl],
        math=load_deepscaler(data_dir, split),
        multimodal=multimodal,
        describe=describe_items(icl, scenes),
        scenes=scenes,
    )


def shared_icl_pools(icl: dict[str, list[VQAItem]], scenes: dict[int, Any]) -> dict[str, list[VQAItem]]:
    """Per ICL task, every single-object ICL image of every task, answered by that task's rule on its scene.

    Why: each train image belongs to one task, and seen ~300 times a run, the image itself gives its task
    away (0-shot accuracy on train items is well above chance): the shortcut spares the model from reading
    an en or alias lexicon off the demonstrations. Drawn from these pools, an episode's
    images come from all tasks alike, so only its demonstrations tell the task; the images stay the few
    (memorisable) train images, on which the model learns to perceive shape.
    Relabelled items get fresh negative question ids (-(3e12 + n)).
    """
    sources = [it for name in sorted(icl) for it in icl[name]
               if (scene := scenes.get(it.image_id)) is not None and len(scene.objects) == 1]
    pools: dict[str, list[VQAItem]] = {}
    n = 0
    for task in ICL_TASKS:
        if task.name not in icl:
            continue
        pool = []
        for it in sources:
            o = scenes[it.image_id].objects[0]
            n += 1
            pool.append(dataclasses.replace(it, question_id=-(3 * 10**12 + n), question_type=task.name,
                                            multiple_choice_answer=task.answer(o.colour, o.shape, o.position),
                                            answers=()))
        pools[task.name] = pool
    return pools


def _generated_rows(seed: int, stream: int, levels: Sequence[int], key: str) -> Iterator[dict[str, Any]]:
    """Rows of the data layer's DeepScaler generator, of `levels` in turn, from the random stream [seed, stream]
    (its own, so that the rows do not depend on how many others were drawn); `key` names the levels' setting."""
    from lmmops.data.synthetic.deepscaler import LEVELS, make_row

    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"bootstrap.{key}: {list(levels)} must be a non-empty list of {sorted(LEVELS)}")
    rng = np.random.default_rng([seed, stream])
    for i in itertools.count():
        yield make_row(rng, levels[i % len(levels)])


def extra_math_rows(n: int, seed: int, exclude: set[str], levels: Sequence[int] = (1, 2, 3, 4, 5)) -> list[MathItem]:
    """`n` more DeepScaler-style rows of `levels` (in turn) from the data layer's generator (own seed;
    `exclude`d problems skipped)."""
    rows: list[MathItem] = []
    for i, row in enumerate(_generated_rows(seed, 9_001, levels, "extra_reasoning_levels"), start=1):
        if len(rows) >= n:
            break
        if row["problem"] not in exclude:
            rows.append(MathItem(f"extra:{i}", row["problem"], row["answer"], row["solution"], row["level"], "train"))
    return rows


# An integer equation of a worked solution: "8 + 7 = 15." (levels 1-2 write every step this way).
_EQUATION = re.compile(r"(?<![\w.])\d+ [-+*] \d+ = -?\d+\.")


def drill_equations(n: int, seed: int, levels: Sequence[int] = (1, 2)) -> list[str]:
    """`n` equations ("8 + 7 = 15.") taken in order from the worked solutions of freshly generated DeepScaler
    rows of `levels` (in turn; own seed): the arithmetic facts the traces need, at the generator's frequencies."""
    out: list[str] = []
    for i, row in enumerate(_generated_rows(seed, 9_002, levels, "arithmetic_drill_levels")):
        if len(out) >= n:
            break
        found = _EQUATION.findall(row["solution"] or "")
        if not found and not out and i >= len(levels):
            raise ValueError(f"bootstrap.arithmetic_drill_levels: the traces of levels {list(levels)} hold no "
                             f"integer equation to drill")
        out += found
    return out[:n]


def extra_icl_items(per_task: int, seed: int, size: int
                    ) -> tuple[dict[str, list[VQAItem]], dict[Path, Image.Image], dict[int, Any]]:
    """`per_task` more items of each ICL task, drawn and rendered by the data layer's own ICL item generator
    (`lmmops.data.synthetic.vqa.icl_image`, on a random stream of their own), kept in memory.

    Why: the train split holds 80 items per ICL task, each seen ~300 times in a run, so the model can learn
    each image's answer instead of reading the task from the demonstrations. A freshly rendered image
    (jitter, background) is not memorised, so only the demonstrations
    can tell the twins apart. Returns the items by task, their images by (pseudo) path and their
    scenes by image id (for `describe_items`).
    """
    from lmmops.data.synthetic.scenes import render_scene
    from lmmops.data.synthetic.vqa import icl_image

    rng = np.random.default_rng([seed, 9_003])
    items: dict[str, list[VQAItem]] = defaultdict(list)
    images: dict[Path, Image.Image] = {}
    scenes: dict[int, Any] = {}
    for i in range(per_task * len(ICL_TASKS)):
        generated = icl_image(rng, i % len(ICL_TASKS), size)
        qa = generated.qas[0]
        path = Path(f"<generated>/icl/{i}.png")  # a key of `images`; nothing is written
        images[path] = render_scene(generated.scene, size)
        scenes[-(i + 1)] = generated.scene
        items[qa.question_type].append(VQAItem(
            question_id=-(10**12 + i), image_id=-(i + 1), question=qa.question, question_type=qa.question_type,
            answer_type=qa.answer_type, multiple_choice_answer=qa.multiple_choice_answer, answers=(),
            image_path=path, split="train"))
    return dict(items), images, scenes


def multimodal_completion(item: MultimodalItem) -> str:
    return f"<think>{MULTIMODAL_THINK}</think><answer>{item.answer.strip()}</answer>"


def corpus_texts(corpora: Corpora) -> list[str]:
    """Every text the model trains on (the tokenizer's vocabulary comes from these)."""
    texts = [item_text(ICLItem(None, it.question, it.multiple_choice_answer), with_answer=True)
             for items in [corpora.vqa, corpora.describe, *corpora.icl.values()] for it in items]
    texts += [reasoning_prompt(r.problem) + (r.solution or "") for r in corpora.math]
    texts += [reasoning_prompt(r.question) + multimodal_completion(r) for r in corpora.multimodal]
    texts += list(ICL_VOCABULARY)
    return texts


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------------------
# model


def image_stats(paths: Sequence[Path], limit: int = 500) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to `limit` of) the training images, in [0, 1].

    Why: the synthetic images are mostly bright background. With CLIP's web-image statistics every pixel
    value sits near +1.7 and the shape is a small deviation, so the vision features are dominated by the
    background and the decoder needs hundreds of steps to start reading them (a colour-only probe stayed
    at ln 4 for 120 steps); normalised with the data's own statistics (as CLIP was with its own data) the
    same probe learns colour in about 50 steps.
    """
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(limit, len(paths))).astype(int)] if paths else []
    if not picks:
        return [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    pixels = np.concatenate([np.asarray(open_image(p).resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float64).reshape(-1, 3)
                             for p in picks]) / 255.0
    return [round(float(v), 4) for v in pixels.mean(0)], [round(float(v), 4) for v in pixels.std(0)]


def build_processor(
    corpus: Sequence[str], image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None
) -> LlavaProcessor:
    """Word-level tokenizer over `corpus` + CLIP image processor (32 px; mean/std of the data when given)."""
    tok = build_word_tokenizer(
        SPECIALS, corpus, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos=True
    )
    stats = {"image_mean": list(image_mean), "image_std": list(image_std)} if image_mean and image_std else {}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **stats
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )


def build_model(cfg: BootstrapConfig, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    tok = processor.tokenizer
    config = LlavaConfig(
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": cfg.text_hidden,
            "intermediate_size": cfg.text_intermediate,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads,
            "num_key_value_heads": cfg.text_kv_heads,
            "max_position_embeddings": 1024,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": cfg.vision_hidden,
            "intermediate_size": cfg.vision_intermediate,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": cfg.vision_heads,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# pre-tokenised training rows (the same ids as the processor + adapter template, built without them)


@dataclass
class Row:
    ids: list[int]
    labels: list[bool]  # True where the loss applies
    images: list[int]  # indices into the pixel table, in order of the image tokens
    group: str  # "icl" | "vqa" | "describe" | "reasoning" | "mm_reasoning" | "arithmetic"
    long: bool = False  # a long ICL episode: forwarded in a sub-batch of its own (see `sub_batches`)


@dataclass
class Encoded:
    """Token ids and pixel tensors of every training item, computed once."""

    pixels: torch.Tensor  # (n_images, 3, 32, 32)
    image_index: dict[Path, int]
    item_ids: dict[int, tuple[list[int], int]]  # VQA question_id -> (text ids, answer length)
    bos: int
    eos: int
    sep: int
    image_tokens: list[int]


def encode(corpora: Corpora, processor: LlavaProcessor, image_seq_length: int) -> Encoded:
    tok = processor.tokenizer
    vqa_items = corpora.vqa + corpora.describe + [it for pools in (corpora.icl, corpora.shared_icl)
                                                  for items in pools.values() for it in items]
    paths = sorted({it.image_path for it in vqa_items} | {r.images[0] for r in corpora.multimodal})
    pixels = processor.image_processor([corpora.image(p) for p in paths], return_tensors="pt")["pixel_values"]
    item_ids = {}
    for it in vqa_items:
        icl_item = ICLItem(None, it.question, it.multiple_choice_answer)
        ids = tok(item_text(icl_item, with_answer=True), add_special_tokens=False)["input_ids"]
        item_ids[it.question_id] = (ids, len(_answer_token_ids(tok, icl_item)))
    return Encoded(
        pixels=pixels,
        image_index={p: i for i, p in enumerate(paths)},
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


def reasoning_row(enc: Encoded, tok: Any, examples: Sequence[tuple[str, str, Path | None]], group: str) -> Row:
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


def sample_batch(rng: np.random.Generator, corpora: Corpora, enc: Encoded, tok: Any, cfg: BootstrapConfig,
                 *, shared: float = 0.0) -> list[Row]:
    """The rows of one training step, by the shares of `cfg`; long ICL episodes (if any) come last. A `shared`
    share of the ICL episodes draws from `corpora.shared_icl` (see `shared_icl_pools`)."""
    n_icl = round(cfg.batch_size * cfg.icl_share) if corpora.icl else 0
    n_long = cfg.long_icl_rows if corpora.icl else 0
    per_long = max(1, cfg.long_max_shots // cfg.max_shots)  # ordinary episodes one long episode replaces
    if n_long * per_long > n_icl:
        raise ValueError(f"bootstrap: long_icl_rows {cfg.long_icl_rows} take the place of {n_long * per_long} ICL "
                         f"episodes, but icl_share gives only {n_icl} rows of a batch of batch_size "
                         f"{cfg.batch_size}")
    n_vqa = round(cfg.batch_size * cfg.vqa_share) if corpora.vqa else 0
    n_mm = round(cfg.batch_size * cfg.multimodal_reasoning_share) if corpora.multimodal else 0
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
        task = tasks[int(rng.integers(len(tasks)))]
        # Drawn only when configured, so that the other draws stay the same without shared images.
        from_shared = shared > 0 and corpora.shared_icl and rng.random() < shared
        pool = corpora.shared_icl[task] if from_shared else corpora.icl[task]
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
        picks = rng.integers(len(corpora.multimodal), size=cfg.reasoning_pack)
        rows.append(reasoning_row(enc, tok, [(reasoning_prompt(r.question, with_image=True), multimodal_completion(r),
                                              r.images[0]) for r in (corpora.multimodal[int(i)] for i in picks)],
                                  "mm_reasoning"))
    for _ in range(n_drill):
        picks = rng.integers(len(corpora.drill), size=cfg.arithmetic_drill_pack)
        rows.append(drill_row(enc, tok, [corpora.drill[int(i)] for i in picks]))
    for _ in range(n_text):
        picks = rng.integers(len(corpora.math), size=cfg.reasoning_pack)
        rows.append(reasoning_row(enc, tok, [(reasoning_prompt(m.problem), m.solution or "", None)
                                             for m in (corpora.math[int(i)] for i in picks)], "reasoning"))
    # Drawn last so that the ordinary rows are the same whether or not long episodes are configured.
    for _ in range(n_long):
        row = icl_episode(cfg.long_max_shots)
        row.long = True
        rows.append(row)
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
    icl = [ICLItem(corpora.image(it.image_path), it.question, it.multiple_choice_answer) for it in items]
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


# ----------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    model: LlavaForConditionalGeneration
    processor: LlavaProcessor
    history: list[dict[str, float]]  # one entry per logged step: step, loss, loss_<group>, lr
    steps: int
    train_seconds: float  # wall time of the optimisation steps, summed over resumed sessions
    resumed_from: int
    checkpoint: Path | None = None
    data_sizes: dict[str, int] = field(default_factory=dict)


def checkpoint_key(cfg: BootstrapConfig, data_dir: Path) -> str:
    """Hash of everything that decides the trained weights: the config (minus bookkeeping), the data and
    the trainer's own source (a change to how rows are built or labelled must not resume an old run)."""
    params = {k: v for k, v in to_dict(cfg).items() if k not in _BOOKKEEPING and not k.startswith("eval_")}
    manifest = data_dir / "manifest.json"
    data = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else str(data_dir.resolve())
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    blob = json.dumps({"params": params, "data": data, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_at(step: int, cfg: BootstrapConfig) -> float:
    """Warm-up, then constant, then a linear decay to 10% over the last `cfg.decay_share` of the steps.

    Why constant for most of the run: the vision path is learned late (the loss sits on a plateau first),
    and a cosine schedule has already shrunk the step size by then.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps * (1 - cfg.decay_share)
    if step < decay_start:
        return cfg.lr
    return cfg.lr * (1 - 0.9 * (step - decay_start) / max(1.0, cfg.steps - decay_start))


def group_loss_sums(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], groups: Sequence[str], sep_id: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Summed next-token cross-entropy and the number of loss positions, per row group (see `group_losses`)."""
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)
    sep = mask & (targets == sep_id) if sep_id is not None else torch.zeros_like(mask)
    content = mask & ~sep
    out = {}
    for g in sorted(set(groups)):
        rows = torch.tensor([x == g for x in groups])
        m = content & rows[:, None]
        out[g] = ((ce * m).sum(), m.sum())
    if sep.any():
        out["separator"] = ((ce * sep).sum(), sep.sum())
    return out


def mean_group_losses(parts: Sequence[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Per group, the mean over the loss positions of every sub-batch together (`group_loss_sums` of each)."""
    totals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in parts:
        for g, (ce_sum, count) in part.items():
            if g in totals:
                ce_sum, count = totals[g][0] + ce_sum, totals[g][1] + count
            totals[g] = (ce_sum, count)
    return {g: ce_sum / count.clamp(min=1) for g, (ce_sum, count) in sorted(totals.items())}


def group_losses(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], groups: Sequence[str], sep_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Mean next-token cross-entropy on the loss positions of each row group.

    With `sep_id`, the labelled separators after answers form their own entry "separator" instead of
    counting in their row's group: they are trivial to predict, and averaged in with one- or two-token
    answers they would halve the weight of the ICL answers.
    """
    return mean_group_losses([group_loss_sums(logits, batch, groups, sep_id)])


def combine_losses(losses: dict[str, torch.Tensor], icl_weight: float = 1.0) -> torch.Tensor:
    """The training loss: a weighted mean of the groups' losses plus the separator's.

    Each group weighs 1, however many tokens it has (reasoning traces are long, ICL answers short), except the
    ICL episodes, which weigh `icl_weight`: they are the hard part (perceiving the attribute and reading the
    lexicon off the demos), and at weight 1 they got a fifth of the gradient.
    """
    weights = {g: icl_weight if g == "icl" else 1.0 for g in losses if g != "separator"}
    if not weights:
        raise ValueError("no loss groups in this batch")
    loss = sum(w * losses[g] for g, w in weights.items()) / sum(weights.values())
    return loss + losses.get("separator", torch.zeros(()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint


def train(
    cfg: BootstrapConfig,
    data_dir: Path,
    checkpoint_dir: Path | None,
    *,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the base model; `stop_after` ends early at that step (tests use it to simulate a crash).

    `on_log(step, metrics)` receives every logged step, including those restored from a checkpoint.
    """
    torch.set_num_threads(cfg.threads)
    data_dir = Path(data_dir)

    # 1. Data and tokenizer: the vocabulary is the train corpora's words.
    corpora = load_corpora(data_dir, "train")
    if cfg.extra_reasoning_rows:
        test_problems = {r.problem for r in load_deepscaler(data_dir, "test")}
        corpora.math = corpora.math + extra_math_rows(cfg.extra_reasoning_rows, cfg.seed, test_problems,
                                                      cfg.extra_reasoning_levels)
    if cfg.arithmetic_drill_share > 0:
        corpora.drill = drill_equations(20_000, cfg.seed, cfg.arithmetic_drill_levels)
    train_images = sorted({it.image_path for items in [corpora.vqa, *corpora.icl.values()] for it in items})
    if cfg.extra_icl_items and corpora.icl:
        size = open_image(next(iter(corpora.icl.values()))[0].image_path).size[0]
        extra, corpora.images, scenes = extra_icl_items(cfg.extra_icl_items, cfg.seed, size)
        corpora.icl = {task: pool + extra.get(task, []) for task, pool in corpora.icl.items()}
        if corpora.describe:  # the attribute questions too, on the fresh images (real data has none)
            corpora.describe = corpora.describe + describe_items(extra, scenes)
        corpora.scenes = {**corpora.scenes, **scenes}
    if not 0 <= cfg.shared_icl_images <= 1:
        raise ValueError(f"bootstrap.shared_icl_images: {cfg.shared_icl_images} must be in [0, 1]")
    if cfg.shared_icl_images > 0:
        corpora.shared_icl = shared_icl_pools(corpora.icl, corpora.scenes)
        if not corpora.shared_icl:
            raise ValueError(f"bootstrap.shared_icl_images: {data_dir} has no ICL items with a scene sidecar "
                             f"(vqa scenes) to relabel; set it to 0 for data without one")
    processor = build_processor(corpus_texts(corpora), *image_stats(train_images))
    model = build_model(cfg, processor)
    tok = processor.tokenizer
    enc = encode(corpora, processor, model.config.image_seq_length)
    check_template(corpora, enc, model, processor)

    # 2. Optimiser, and the checkpoint to resume from (same config and data only: the key is their hash).
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Path(checkpoint_dir) / checkpoint_key(cfg, data_dir) / "last.pt" if checkpoint_dir else None
    start, history, seconds = 0, [], 0.0
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, seconds = state["step"], state["history"], state["train_seconds"]
    for entry in history:
        if on_log:
            on_log(int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})

    def checkpoint(step: int) -> None:
        if ckpt is not None:
            save_checkpoint(ckpt, {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "history": history, "train_seconds": seconds, "config": to_dict(cfg)})

    # 3. The loop. Each step's batch depends only on (seed, step), so a resumed run sees the same data.
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    model.train()
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc="bootstrap", disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, step])
        rows = sample_batch(rng, corpora, enc, tok, cfg,
                            shared=cfg.shared_icl_images if step >= cfg.shared_icl_from_step else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        sums = []
        for part in sub_batches(rows):
            batch = collate(part, enc, tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch.get("pixel_values")).logits
            sums.append(group_loss_sums(logits, batch, [r.group for r in part], sep_id=enc.sep))
        losses = mean_group_losses(sums)
        loss = combine_losses(losses, cfg.icl_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seconds += time.perf_counter() - t0
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            entry = {"step": float(done), "loss": loss.item(), "lr": lr_at(step, cfg), "train_seconds": seconds,
                     **{f"loss_{g}": v.item() for g, v in losses.items()}}
            history.append(entry)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_log:
                on_log(done, {k: v for k, v in entry.items() if k != "step"})
        if done % cfg.checkpoint_every == 0 or done == end:
            checkpoint(done)
    bar.close()
    model.eval()
    return TrainResult(
        model=model,
        processor=processor,
        history=history,
        steps=max(start, end),
        train_seconds=seconds,
        resumed_from=start,
        checkpoint=ckpt,
        data_sizes={"icl_items": sum(map(len, corpora.icl.values())), "generated_icl_items": len(corpora.images),
                    "vqa_items": len(corpora.vqa),
                    "describe_items": len(corpora.describe),
                    "math_rows": len(corpora.math), "multimodal_rows": len(corpora.multimodal)},
    )


# ----------------------------------------------------------------------------------------------------
# evaluation


def icl_chance(item: VQAItem) -> float:
    """Accuracy of guessing the task uniformly: the share of the 9 tasks that give this item's answer."""
    task = get_icl_task(item.question_type)
    value = next(v for v, a in task.mapping if a == item.multiple_choice_answer)
    same = [t for t in ICL_TASKS if t.attribute == task.attribute]
    return sum(t.answer_for_value(value) == item.multiple_choice_answer for t in same) / len(ICL_TASKS)


def telling_twin_answer(query: VQAItem, demos: Sequence[VQAItem]) -> str | None:
    """The twin task's answer to an "en"/"alias" query whose value the two tasks answer differently, when one of
    `demos` shows such a value (so the demos tell "en" from "alias"); else None. E.g. a colour/alias query of a
    red image (answer "crimson"), with a demo of a red image answered "crimson": "red", the colour/en answer.
    The twin is the one other task whose answer words overlap (`tasks_sharing_vocabulary`)."""
    task = get_icl_task(query.question_type)
    twins = tasks_sharing_vocabulary(task.name)
    if len(twins) != 1:
        return None
    twin = get_icl_task(twins[0])

    def telling(item: VQAItem) -> str | None:  # the item's value if the twins answer it differently
        value = next(v for v, a in task.mapping if a == item.multiple_choice_answer)
        return value if twin.answer_for_value(value) != item.multiple_choice_answer else None

    value = telling(query)
    if value is None or not any(telling(d) for d in demos):
        return None
    return twin.answer_for_value(value)


@torch.no_grad()
def evaluate_icl(
    model: Any,
    processor: Any,
    items: Sequence[VQAItem],
    shots: Sequence[int] = (0, 1, 2, 4, 8),
    *,
    repeats: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    demo_pool: Sequence[VQAItem] | None = None,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """k-shot accuracy on the ICL items of `items`, per task and averaged, for every k in `shots`.

    Each ICL query is asked `repeats` times with demonstrations drawn from the other items of its task
    (in `demo_pool` when given, else in `items`); the k-shot prompt uses the first k of the same draw, so
    the shot counts differ only in k. Correct = greedy decoding emits exactly the answer tokens (teacher
    forced, one forward pass). Returns icl_acc_<k>shot, icl_acc_<k>shot/<task>, the same without the near-duplicate
    queries (icl_acc_nodup_<k>shot, icl_acc_nodup_<k>shot/<task>, icl_queries_nodup), icl_chance, icl_queries, and
    icl_twin_rate_<k>shot (k >= 1): over the "en" and "alias" queries whose value the two answer differently and
    whose demos include one such value (so the demos tell the two tasks apart), the share answered with the twin
    task's word. A model that reads the lexicon off the demos drives it to 0; one that only recognises the
    attribute and guesses between the twins stays near 0.5.
    """
    adapter = adapter_for(model, processor)
    queries = [it for it in items if it.is_icl]
    pool: dict[str, list[VQAItem]] = defaultdict(list)
    for it in demo_pool if demo_pool is not None else queries:
        if it.is_icl:
            pool[it.question_type].append(it)
    images: dict[Path, Image.Image] = {}

    def as_icl(it: VQAItem) -> ICLItem:
        if it.image_path not in images:
            images[it.image_path] = open_image(it.image_path)
        return ICLItem(images[it.image_path], it.question, it.multiple_choice_answer)

    max_k = max(shots)
    jobs: list[tuple[int, str, list[VQAItem], VQAItem]] = []
    for qi, q in enumerate(queries):
        candidates = [d for d in pool[q.question_type] if d.question_id != q.question_id]
        for r in range(repeats):
            rng = np.random.default_rng([seed, qi, r])
            picks = rng.choice(len(candidates), size=min(max_k, len(candidates)), replace=False)
            demos = [candidates[i] for i in picks]
            jobs += [(k, q.question_type, demos[:k], q) for k in shots]
    # Batches of one shot count each (jobs sorted by k, stable): a batch is right-padded to its longest prompt,
    # and mixing 0- and 16-shot prompts in one batch made every row cost a 16-shot forward (~2.5x the compute).
    # Right padding never reaches a real token (causal attention), so the order changes nothing but the time.
    device = next(model.parameters()).device
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][0])
    answers: list[tuple[bool, torch.Tensor]] = [None] * len(jobs)  # type: ignore[list-item]
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        batch = adapter.build_prompts([([as_icl(d) for d in jobs[j][2]], as_icl(jobs[j][3])) for j in chunk],
                                      with_answer=True).to(device)
        logits = model(**batch.model_inputs()).logits
        for row, j in enumerate(chunk):
            s, e = batch.answer_spans[row]
            predicted = logits[row, s - 1 : e - 1].argmax(-1)
            answers[j] = (bool((predicted == batch.input_ids[row, s:e]).all()), predicted.cpu())
    correct: dict[tuple[int, str], list[float]] = defaultdict(list)
    duplicate: dict[tuple[int, str], list[bool]] = defaultdict(list)  # beside `correct`: a near-duplicate query
    twin_answers: dict[int, list[float]] = defaultdict(list)
    for (k, task, _demos, q), (ok, predicted) in zip(jobs, answers, strict=True):
        correct[(k, task)].append(float(ok))
        duplicate[(k, task)].append(q.near_duplicate_of is not None)
        twin = telling_twin_answer(q, _demos)
        if twin is not None:
            twin_answers[k].append(float(processor.tokenizer.decode(predicted).strip() == twin))
        if samples_out is not None and len(samples_out) < 40 and k in (0, max_k):
            samples_out.append({"shots": k, "task": task, "answer": q.multiple_choice_answer,
                                "predicted": processor.tokenizer.decode(predicted), "correct": ok})
    out: dict[str, float] = {}
    tasks = sorted({t for _, t in correct})
    for k in shots:
        per_task = {t: float(np.mean(correct[(k, t)])) for t in tasks}
        out[f"icl_acc_{k}shot"] = float(np.mean([v for t in tasks for v in correct[(k, t)]])) if tasks else 0.0
        out.update({f"icl_acc_{k}shot/{t.removeprefix('icl/')}": v for t, v in per_task.items()})
        if twin_answers[k]:
            out[f"icl_twin_rate_{k}shot"] = float(np.mean(twin_answers[k]))
        # The same scores without the near-duplicate queries (near-copies of a train item; synthetic data only).
        kept = {t: split_by_mask(correct[(k, t)], duplicate[(k, t)])[1] for t in tasks}
        if any(kept.values()):
            out[f"icl_acc_nodup_{k}shot"] = float(np.mean([v for t in tasks for v in kept[t]]))
        out.update({f"icl_acc_nodup_{k}shot/{t.removeprefix('icl/')}": float(np.mean(v)) for t, v in kept.items()
                    if v})
    out["icl_chance"] = float(np.mean([icl_chance(q) for q in queries])) if queries else 0.0
    out["icl_queries"] = float(len(queries))
    out["icl_queries_nodup"] = float(sum(q.near_duplicate_of is None for q in queries))
    return out


@torch.no_grad()
def generate_completions(model: Any, processor: Any, prompts: Sequence[str], *, max_new_tokens: int = 96,
                         batch_size: int = 50) -> list[str]:
    """Greedy completions of text-only prompts (left padded), special tokens removed."""
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    device = next(model.parameters()).device
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        enc = tok(list(prompts[b : b + batch_size]), padding=True, padding_side="left", return_tensors="pt").to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate_reasoning(
    model: Any,
    processor: Any,
    rows: Sequence[MathItem],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 50,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Format rate and accuracy of greedy completions on DeepScaler rows, with the RL rewards of record.

    Returns reasoning_format_rate (`format_reward`), reasoning_accuracy (`verify_batch`, rows with an
    unparseable gold skipped) and reasoning_accuracy/level<n>. The caller needs an
    `if __name__ == "__main__":` guard when this runs in a script (the verifier uses worker processes).
    """
    from lmmops.rl.rewards import format_reward, verify_batch

    completions = generate_completions(model, processor, [reasoning_prompt(r.problem) for r in rows],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    formats = [format_reward(c) for c in completions]
    accuracy = verify_batch(completions, [r.answer for r in rows])
    scored = [(r, a) for r, a in zip(rows, accuracy, strict=True) if a is not None]
    out = {
        "reasoning_format_rate": float(np.mean(formats)) if formats else 0.0,
        "reasoning_accuracy": float(np.mean([a for _, a in scored])) if scored else 0.0,
        "reasoning_rows": float(len(rows)),
    }
    for level in sorted({r.level for r, _ in scored if r.level is not None}):
        out[f"reasoning_accuracy/level{level}"] = float(np.mean([a for r, a in scored if r.level == level]))
    if samples_out is not None:
        samples_out += [{"problem": r.problem, "answer": r.answer, "completion": c, "format": f, "accuracy": a}
                        for r, c, f, a in list(zip(rows, completions, formats, accuracy, strict=True))[:20]]
    return out


def config_summary(cfg: BootstrapConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _BOOKKEEPING}
