# Over 500 lines: the distillation loop, its resumable checkpoints and the vectors' evaluation share one state.
"""The LIVE and MimIC distillation loops: train one vector set on one task's pool, and evaluate it.

What it does: `distill(cfg, model, processor, train_items)` trains a LIVE (docs/methods.md §5) or MimIC (§6) vector
set on a frozen base model. Each step reads a batch of queries from the pool, gives each one `shots`
demonstrations drawn at random with replacement from the rest of the pool (`lmmops.vectors.data`), and
  teacher  runs the frozen model WITHOUT vectors on instruction + demos + query + answer (no_grad);
  student  runs the model WITH the vectors on instruction + query + answer (the same template and
           instruction as at inference, `lmmops.icl.inference.ICLRunner`);
  LIVE     loss = KL(P_teacher || P_student) on the answer tokens + lm_weight * LM loss on the answer;
  MimIC    loss = mean over layers and tokens of ||h_teacher - h_student||^2, h the output of every decoder
           layer's MLP (the reference's choice), over the query and answer tokens (no BOS, instruction or
           pads) + lm_weight * LM loss on the answer.
AdamW (LIVE: one group for V at `lr`, one for alpha at `alpha_lr`; MimIC: v, w at `lr` with weight decay,
b without), linear warm-up over `warmup_share` of the steps then cosine decay, gradient clipping. A
non-finite loss or gradient norm stops training with `NonFiniteLossError` before the optimiser step, so the
last checkpoint (of the last good step) is never overwritten by the bad state. Training state (vectors,
optimiser, history) is checkpointed atomically under `<checkpoint_dir>/<key>/last.pt`, key = hash of the
config (minus bookkeeping), the pool, the base model's weights and tokenizer, and this code; a run with the
same key resumes there and gives the same vectors as an uninterrupted run (each step's data is a function of
(seed, step) only, the learning rate of the step index).
DeepSpeed (`deepspeed`: path of a ZeRO-2 JSON config, infra/deepspeed/zero2.json): the same loop, with the vectors
and this AdamW wrapped in a DeepSpeed engine (`lmmops.vectors.distributed`): `engine.backward` / `engine.step`,
clipping by the config's `gradient_clipping` (filled from `max_grad_norm`), the same learning rate set on the same
groups each step, the same non-finite checks before the step, the same checkpoint format (a run resumes with or
without DeepSpeed; `deepspeed` is not part of the checkpoint key). Under a launcher (torchrun, `deepspeed
--no_local_rank`) each rank trains on its share of every step's rows; only rank 0 logs and writes checkpoints.
`evaluate_vectors(model, processor, vectors, items)` generates greedy answers for each query alone with the
vectors attached (through `ICLRunner`: the inference template, stop tokens and `adapter.postprocess_answer`)
and scores them with the official VQA accuracy.

How to run (the `live` / `mimic` stages wrap this, lmmops.stages.vectors):
    cfg = DistillConfig(train=LiveDistillSettings(steps=144), shots=16)   # lmmops.config; the stage: live.train
    result = distill(cfg, model, processor, pools["icl/colour/en"], checkpoint_dir=Path("checkpoints/live"))
    evaluate_vectors(model, processor, result.vectors, val_items, batch_size=32, max_new_tokens=8)
Tests: `python -m pytest tests/vectors/test_train.py -q`.

Positions and token alignment: teacher and student batches are both RIGHT-padded, so every row's real tokens
sit at positions 0..n-1 exactly as that prompt alone would (every family numbers positions from the first
real token then, M-RoPE included), which is also how `generate()` numbers a left-padded inference batch;
MimIC's logZ1 = w.q + b reads q after RoPE, so training and inference see the same absolute positions (the
note in `lmmops.vectors.mimic`). The student's query starts right after the prefix, the teacher's after the
demonstrations: `align_tokens` pairs them through the PromptBatch spans (prefix, query, answer) and checks,
row by row, that the paired tokens are the same ids, in the same order, before any loss reads them.

Departures from the papers and reference code: the student prompt carries the inference instruction and the
LM loss covers the answer tokens only (LIVE reference defects); MimIC's logZ2 is masked like the attention
(see `mimic`); teacher demonstrations are drawn per (seed, step), not from a global RNG; one device unless
DeepSpeed is configured, and no autocast (the base model runs in its loaded dtype, the vectors in fp32);
`micro_batch_size` splits a step's batch into gradient-accumulation chunks weighted by their share of the loss
tokens (`chunk_weights`, so the accumulated loss is the whole-batch loss); weight decay applies to both LIVE
groups; text-only (llama-family) models are not covered (training items are VQA items with images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmmops.config import DistillSettings, LiveDistillSettings
from lmmops.data.schemas import VQAItem
from lmmops.icl.experiment import item_accuracy
from lmmops.icl.inference import ICLRunner
from lmmops.models import ModelAdapter, PromptAlignmentError, PromptBatch, adapter_for, adapters, prompt
from lmmops.vectors import data
from lmmops.vectors.base import LossParts, VectorSet, capture_outputs, frozen
from lmmops.vectors.data import DemoPool, Draw, sample_step, steps_per_epoch
from lmmops.vectors.distributed import DeepSpeedRun
from lmmops.vectors.live import LiveVectors, attach_live, live_loss
from lmmops.vectors.mimic import MimicVectors, aligned_hidden, attach_mimic, mimic_loss

METHODS: dict[str, type[VectorSet]] = {"live": LiveVectors, "mimic": MimicVectors}
DEFAULT_LR = {"live": 1e-3, "mimic": 5e-3}  # docs/methods.md: LIVE lr(V) 1e-3 (VQAv2), MimIC 5e-3
CHECKPOINT_FORMAT = 1
# Fields of DistillConfig and its DistillSettings that do not change the trained vectors (left out of the checkpoint
# key). `deepspeed` changes how the step is computed, not what is trained (same vectors up to fp32 rounding, same
# checkpoint format): a run may resume with or without it.
_BOOKKEEPING = ("checkpoint_every", "log_every", "threads", "deepspeed")


class NonFiniteLossError(FloatingPointError):
    """A training loss or gradient norm was NaN or infinite; the last checkpoint is the last good step."""


@dataclass(frozen=True)
class DistillConfig:
    """One LIVE or MimIC training run: the stage's training settings (`train`, whose type gives the method) and the
    stage keys that training shares with evaluation."""

    train: DistillSettings  # LiveDistillSettings or MimicDistillSettings (lmmops.config): steps, lr, ...
    shots: int  # demonstrations per teacher prompt
    seed: int = 0
    instruction: str | None = None  # the same at training and inference
    threads: int = 1  # torch intra-op threads while training
    deepspeed: str | None = None  # DeepSpeed JSON config (infra/deepspeed/zero2.json); None: plain PyTorch
    # The query's answer is followed by the item separator, which the losses cover too: inference stops
    # generating there, so the student must learn where its answer ends (without it LIVE students ran on:
    # "golf echo echo foxtrot" for "golf").
    close_answer: bool = True

    def __post_init__(self) -> None:
        t = self.train
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (training settings {type(t).__name__}); expected one "
                             f"of {sorted(METHODS)}")
        if self.shots < 1 or t.batch_size < 1:
            raise ValueError(f"shots and batch_size must be >= 1, got {self.shots}, {t.batch_size}")
        if t.micro_batch_size is not None and t.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {t.micro_batch_size}")
        if t.steps < 1:
            raise ValueError(f"steps must be >= 1, got {t.steps}")
        if t.checkpoint_every < 1 or t.log_every < 1:
            raise ValueError(f"checkpoint_every and log_every must be >= 1, got {t.checkpoint_every}, {t.log_every}")
        if not 0.0 <= t.warmup_share < 1.0:
            raise ValueError(f"warmup_share must be in [0, 1), got {t.warmup_share}")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"deepspeed: no DeepSpeed config at {self.deepspeed}")

    @property
    def method(self) -> str:
        return self.train.method

    @property
    def vector_lr(self) -> float:
        return self.train.lr if self.train.lr is not None else DEFAULT_LR[self.method]

    def as_dict(self) -> dict[str, Any]:
        """The config as plain data, with its method (kept in checkpoints and results)."""
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass
class DistillResult:
    vectors: VectorSet
    history: list[dict[str, float]]  # one entry per logged step: step, loss, loss_distill, loss_lm, lr, ...
    steps: int  # the step training stopped at
    total_steps: int
    train_seconds: float  # wall time of the optimisation steps, summed over resumed sessions
    resumed_from: int
    key: str
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# schedule, optimiser, token alignment (pure)


def warmup_steps(cfg: DistillConfig, total: int) -> int:
    return round(cfg.train.warmup_share * total)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rates at 0-based `step`: (step+1)/warmup, then cosine from 1 towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(cfg: DistillConfig, vectors: VectorSet) -> torch.optim.AdamW:
    """AdamW with the method's parameter groups; each group keeps its `base_lr` for the schedule."""
    if isinstance(vectors, LiveVectors):
        if not isinstance(cfg.train, LiveDistillSettings):
            raise TypeError(f"LIVE vectors need LiveDistillSettings (alpha_lr), got {type(cfg.train).__name__}")
        groups = [
            {"name": "vectors", "params": [vectors.vectors], "base_lr": cfg.vector_lr},
            {"name": "alpha", "params": [vectors.alpha], "base_lr": cfg.train.alpha_lr},
        ]
        for g in groups:
            g["weight_decay"] = cfg.train.weight_decay
    elif isinstance(vectors, MimicVectors):
        groups = [
            {"name": "shift_weight", "params": [vectors.shift, vectors.weight], "base_lr": cfg.vector_lr,
             "weight_decay": cfg.train.weight_decay},
            {"name": "bias", "params": [vectors.bias], "base_lr": cfg.vector_lr, "weight_decay": 0.0},
        ]
    else:
        raise TypeError(f"no optimiser groups for {type(vectors).__name__}")
    for g in groups:
        g["lr"] = g["base_lr"]
    return torch.optim.AdamW(groups)


@dataclass(frozen=True)
class AlignedTokens:
    """Bool masks (batch, seq) of the tokens the losses compare, in each run's own layout.

    Row by row, the True positions of `teacher_query` and `student_query` hold the same token ids in the same
    order (the query's image tokens, question and answer; no BOS, instruction or pads); so do `teacher_answer`
    and `student_answer` (the query's answer tokens).
    """

    teacher_query: torch.Tensor
    student_query: torch.Tensor
    teacher_answer: torch.Tensor
    student_answer: torch.Tensor


def align_tokens(teacher: PromptBatch, student: PromptBatch) -> AlignedTokens:
    """Pair the teacher's query/answer tokens (after the demos) with the student's (right after the prefix).

    Raises PromptAlignmentError unless, in every row, the student has no demonstrations, both have the same
    prefix tokens (BOS, instruction) and the same query and answer tokens, and the answer ends the query.
    """
    if len(teacher) != len(student):
        raise PromptAlignmentError(f"teacher batch has {len(teacher)} rows, student batch {len(student)}")
    for r in range(len(student)):
        tp, sp = teacher.prefix_spans[r], student.prefix_spans[r]
        tq, sq = teacher.query_spans[r], student.query_spans[r]
        ta, sa = teacher.answer_spans[r], student.answer_spans[r]
        if ta is None or sa is None:
            raise PromptAlignmentError(f"row {r}: teacher and student prompts need answers (with_answer=True)")
        sd = student.demo_spans[r]
        if sd[1] != sd[0]:
            raise PromptAlignmentError(f"row {r}: the student prompt has demonstration tokens {sd}")
        pairs = {"prefix": (tp, sp), "query": (tq, sq), "answer": (ta, sa)}
        for name, ((t0, t1), (s0, s1)) in pairs.items():
            t_ids, s_ids = teacher.input_ids[r, t0:t1], student.input_ids[r, s0:s1]
            if t_ids.shape != s_ids.shape or not torch.equal(t_ids, s_ids):
                raise PromptAlignmentError(f"row {r}: teacher {name} tokens {t_ids.tolist()} differ from the "
                                           f"student's {s_ids.tolist()}")
        if ta[1] != tq[1] or sa[1] != sq[1]:
            raise PromptAlignmentError(f"row {r}: the answer does not end the query (teacher {tq} / {ta}, "
                                       f"student {sq} / {sa})")
    return AlignedTokens(
        teacher_query=teacher.query_mask,
        student_query=student.query_mask,
        teacher_answer=teacher.answer_mask,
        student_answer=student.answer_mask,
    )


def loss_token_counts(method: str, chunks: Sequence[AlignedTokens]) -> list[tuple[int, int]]:
    """Per micro-batch, the number of tokens its (distill, lm) loss terms average over."""
    answers = [int(a.student_answer.sum()) for a in chunks]
    distilled = answers if method == "live" else [int(a.student_query.sum()) for a in chunks]
    return list(zip(distilled, answers, strict=True))


def chunk_weights(method: str, chunks: Sequence[AlignedTokens]) -> list[tuple[float, float]]:
    """Per micro-batch, the weights of its (distill, lm) loss terms in the whole batch's loss.

    Both terms are means over tokens (LIVE's KL over answer tokens, MimIC's alignment over query tokens, the LM
    loss over answer tokens), so a chunk weighs its share of those tokens and the weighted sum over chunks is
    the whole-batch loss exactly (up to float rounding); a single chunk gets (1, 1).
    """
    counts = loss_token_counts(method, chunks)
    distilled, answers = sum(d for d, _ in counts), sum(n for _, n in counts)
    return [(d / distilled, n / answers) for d, n in counts]


def answer_lm_loss(logits: torch.Tensor, answer_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on the answer tokens (each predicted by the logits one position before)."""
    if bool(answer_mask[:, 0].any()):
        raise ValueError("an answer token at position 0 has no logits predicting it")
    targets = answer_mask[:, 1:].bool()
    predicting = logits[:, :-1][targets].float()
    return nn.functional.cross_entropy(predicting, input_ids[:, 1:][targets].long())


# ----------------------------------------------------------------------------------------------------
# the two losses on one (micro-)batch


@contextmanager
def attached(model: nn.Module, vectors: VectorSet, adapter: ModelAdapter) -> Iterator[VectorSet]:
    """`attach_live` or `attach_mimic`, by the vector set's method."""
    if isinstance(vectors, LiveVectors):
        with attach_live(model, vectors, adapter):
            yield vectors
    elif isinstance(vectors, MimicVectors):
        with attach_mimic(model, vectors, adapter):
            yield vectors
    else:
        raise TypeError(f"cannot attach {type(vectors).__name__}")


def live_batch_loss(
    model: nn.Module, adapter: ModelAdapter, vectors: LiveVectors, teacher: PromptBatch, student: PromptBatch,
    aligned: AlignedTokens, lm_weight: float,
) -> LossParts:
    with torch.no_grad():
        teacher_logits = model(**teacher.model_inputs()).logits
    with attach_live(model, vectors, adapter):
        student_logits = model(**student.model_inputs()).logits
    return live_loss(teacher_logits, student_logits, aligned.teacher_answer, aligned.student_answer,
                     student.input_ids, lm_weight=lm_weight)


def mimic_batch_loss(
    model: nn.Module, adapter: ModelAdapter, vectors: MimicVectors, teacher: PromptBatch, student: PromptBatch,
    aligned: AlignedTokens, lm_weight: float,
) -> LossParts:
    sites = adapter.mlp_modules
    with torch.no_grad(), capture_outputs(sites) as hidden:
        model(**teacher.model_inputs())
        teacher_hidden = aligned_hidden(hidden, aligned.teacher_query)  # type: ignore[arg-type]
    with attach_mimic(model, vectors, adapter), capture_outputs(sites) as hidden:
        student_logits = model(**student.model_inputs()).logits
        student_hidden = aligned_hidden(hidden, aligned.student_query)  # type: ignore[arg-type]
    lm = answer_lm_loss(student_logits, aligned.student_answer, student.input_ids)
    return mimic_loss(teacher_hidden, student_hidden, lm, lm_weight=lm_weight)


# ----------------------------------------------------------------------------------------------------
# checkpoints


def _tensor_digest(h: Any, tensor: torch.Tensor, full_limit: int = 1 << 20, sample: int = 1 << 16) -> None:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > full_limit:  # large tensors: a strided sample and the exact float64 sum
        h.update(repr(float(torch.sum(flat, dtype=torch.float64))).encode())
        flat = flat[:: max(1, flat.numel() // sample)]
    h.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module, processor: Any) -> str:
    """Hash of the base model's weights (complete up to 1M elements per tensor, sampled + summed beyond) and of
    the tokenizer's vocabulary: what the trained vectors depend on besides the config and the data."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        _tensor_digest(h, tensor)
    tokenizer = getattr(processor, "tokenizer", processor)
    h.update(type(processor).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def checkpoint_key(cfg: DistillConfig, pool: DemoPool, model: nn.Module, processor: Any) -> str:
    """Hash of the config (minus bookkeeping), the pool, the base model and this trainer's code."""
    config = cfg.as_dict()
    config["train"] = {k: v for k, v in config["train"].items() if k not in _BOOKKEEPING}
    params = {k: v for k, v in config.items() if k not in _BOOKKEEPING}
    code = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in (__file__, *_prompt_code_files())]
    blob = json.dumps({"config": params, "data": pool.fingerprint(), "model": model_fingerprint(model, processor),
                       "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prompt_code_files() -> list[str]:
    """The modules that decide which tokens a step trains on (sampling, prompt template, spans): a change to any
    of them must not resume an old checkpoint."""

    return [str(data.__file__), str(prompt.__file__), str(adapters.__file__)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to a temporary file beside `path`, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this lmmops reads {CHECKPOINT_FORMAT}")
    return state


# ----------------------------------------------------------------------------------------------------
# the loop


def _chunks(draws: list[Draw], size: int | None) -> list[list[Draw]]:
    size = size or len(draws)
    return [draws[i : i + size] for i in range(0, len(draws), size)]


def distill(
    cfg: DistillConfig,
    model: nn.Module,
    processor: Any,
    train_items: Sequence[VQAItem],
    *,
    checkpoint_dir: Path | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train (or resume) one vector set on `train_items` (one task's pool); see the module docstring.

    `stop_after` ends early at that step (tests use it to simulate a crash). `on_log(step, metrics)` receives
    every logged step, including those restored from a checkpoint. The base model is left as it was found
    (weights, requires_grad flags, train/eval mode).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    adapter = adapter_for(model, processor)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    pool = DemoPool(train_items)
    total = cfg.train.steps
    warmup = warmup_steps(cfg, total)

    # 1. Vectors and optimiser; resume from the checkpoint of the same config, data and base model.
    vectors = METHODS[cfg.method].for_adapter(adapter, seed=cfg.seed).to(device)
    optimizer = make_optimizer(cfg, vectors)
    key = checkpoint_key(cfg, pool, model, processor)
    ckpt = Path(checkpoint_dir) / key / "last.pt" if checkpoint_dir is not None else None
    start, history, seconds = 0, [], 0.0
    if ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt)
        vectors.load_state_dict(state["vectors"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, seconds = int(state["step"]), list(state["history"]), float(state["train_seconds"])
    # With DeepSpeed, the (restored) vectors and optimiser go into a ZeRO-2 engine; rank 0 logs and checkpoints.
    ds = DeepSpeedRun.start(cfg.deepspeed, vectors, optimizer, batch_size=cfg.train.batch_size,
                            micro_batch_size=cfg.train.micro_batch_size, max_grad_norm=cfg.train.max_grad_norm) \
        if cfg.deepspeed else None
    main = ds is None or ds.is_main
    for entry in history:
        if on_log and main:
            on_log(int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})

    def checkpoint(step: int) -> None:
        if ckpt is not None:
            optimizer_state = optimizer.state_dict() if ds is None else ds.optimizer_state_dict()
            if main:
                save_checkpoint(ckpt, {"format": CHECKPOINT_FORMAT, "key": key, "step": step,
                                       "vectors": vectors.state_dict(), "optimizer": optimizer_state,
                                       "history": history, "train_seconds": seconds,
                                       "config": cfg.as_dict()})

    def kept(saved: int) -> str:
        if ckpt is None:
            return "no checkpoint directory was given"
        return f"checkpoint {ckpt} holds step {saved}" if saved else "no checkpoint was written yet"

    batch_loss = live_batch_loss if cfg.method == "live" else mimic_batch_loss

    def prompt_pair(specs: list[Any]) -> tuple[PromptBatch, PromptBatch, AlignedTokens]:
        """Teacher (demos + query + answer) and student (query + answer) batches, right-padded, aligned."""
        kw = {"with_answer": True, "instruction": cfg.instruction, "padding_side": "right",
              "close_answer": cfg.close_answer}
        teacher = adapter.build_prompts(specs, **kw)
        student = adapter.build_prompts([([], query) for _demos, query in specs], **kw)
        return teacher, student, align_tokens(teacher, student)

    # 2. The loop. Each step's queries and demos depend only on (seed, step), its learning rate on the step.
    end = total if stop_after is None else min(total, stop_after)
    saved = start  # the step the checkpoint on disk holds
    was_training = model.training
    model.eval()  # the base model is frozen: no dropout in teacher or student
    bar = tqdm(range(start, end), initial=start, total=total, desc=cfg.method, disable=not (progress and main),
               mininterval=1.0, dynamic_ncols=True)
    try:
        with frozen(model):
            for step in bar:
                t0 = time.perf_counter()
                draws = sample_step(pool.question_ids, batch_size=cfg.train.batch_size, shots=cfg.shots, seed=cfg.seed,
                                    step=step)
                factor = lr_factor(step, total, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                if ds is None:
                    optimizer.zero_grad(set_to_none=True)
                    chunks = [prompt_pair(pool.prompts(chunk)) for chunk in _chunks(draws, cfg.train.micro_batch_size)]
                    weights = chunk_weights(cfg.method, [aligned for _t, _s, aligned in chunks])
                else:  # this rank's share of the rows, weighed in all ranks' loss tokens; the engine zeroes grads
                    batches, counted = ds.micro_batches(draws, cfg.train.micro_batch_size)
                    chunks = [prompt_pair(pool.prompts(chunk)) for chunk in batches]
                    counts = loss_token_counts(cfg.method, [aligned for _t, _s, aligned in chunks])
                    weights = ds.chunk_weights(counts, counted)
                parts = torch.zeros(3)
                for i, ((teacher, student, aligned), (w_distill, w_lm)) in enumerate(zip(chunks, weights,
                                                                                         strict=True)):
                    loss = batch_loss(model, adapter, vectors, teacher.to(device, dtype), student.to(device, dtype),
                                      aligned, cfg.train.lm_weight)  # type: ignore[arg-type]
                    if not all(bool(torch.isfinite(t)) for t in loss):
                        raise NonFiniteLossError(f"{cfg.method} step {step + 1}: loss {loss.total.item()} (distill "
                                                 f"{loss.distill.item()}, lm {loss.lm.item()}); {kept(saved)}")
                    distill_part, lm_part = w_distill * loss.distill, w_lm * loss.lm
                    chunk_total = distill_part + cfg.train.lm_weight * lm_part  # = loss.total for a single chunk
                    if ds is None:
                        chunk_total.backward()
                    else:
                        ds.backward(chunk_total, last=i == len(chunks) - 1)
                    parts += torch.stack([chunk_total, distill_part, lm_part]).detach().float().cpu()
                if ds is None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(vectors.parameters(), cfg.train.max_grad_norm)
                else:  # DeepSpeed clips in ds.step(), by the config's gradient_clipping (= max_grad_norm)
                    grad_norm, parts = ds.grad_norm(), ds.all_sum(parts)
                if not bool(torch.isfinite(grad_norm)):
                    raise NonFiniteLossError(f"{cfg.method} step {step + 1}: gradient norm {grad_norm.item()}; "
                                             f"{kept(saved)}")
                if ds is None:
                    optimizer.step()
                else:
                    ds.step()
                seconds += time.perf_counter() - t0
                done = step + 1
                if done % cfg.train.log_every == 0 or done == end:
                    entry = {"step": float(done), "loss": parts[0].item(), "loss_distill": parts[1].item(),
                             "loss_lm": parts[2].item(), "lr": cfg.vector_lr * factor,
                             "grad_norm": float(grad_norm),
                             "epoch": done / steps_per_epoch(len(pool), cfg.train.batch_size),
                             "train_seconds": seconds}
                    if isinstance(vectors, LiveVectors):
                        entry["alpha_mean"] = vectors.alpha.detach().mean().item()
                    history.append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
                    if on_log and main:
                        on_log(done, {k: v for k, v in entry.items() if k != "step"})
                if done % cfg.train.checkpoint_every == 0 or done == end:
                    checkpoint(done)
                    saved = done
        if ds is not None:
            vectors = ds.finish(vectors)  # a plain copy, without DeepSpeed's flat buffers and hooks
    finally:
        bar.close()
        model.train(was_training)
        torch.set_num_threads(threads)
        if ds is not None:
            ds.close()
    return DistillResult(
        vectors=vectors,
        history=history,
        steps=max(start, end),
        total_steps=total,
        train_seconds=seconds,
        resumed_from=start,
        key=key,
        checkpoint=ckpt,
        config=cfg.as_dict(),
    )


# ----------------------------------------------------------------------------------------------------
# evaluation


def evaluate_vectors(
    model: nn.Module,
    processor: Any,
    vectors: VectorSet | None,
    items: Sequence[VQAItem],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    instruction: str | None = None,
    progress: bool = False,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """VQA accuracy of greedy answers to each query alone (no demonstrations) with `vectors` attached.

    `vectors=None` evaluates the plain zero-shot model. Prompts, generation and answer post-processing are
    `ICLRunner`'s (the inference path); the score is `vqa_accuracy` against the item's annotator answers (an
    item without them counts its `multiple_choice_answer` as all 10). Returns accuracy, queries and
    accuracy/<question_type>; `samples_out` (when given) receives every question, answer and prediction.
    """

    runner = ICLRunner(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    items = list(items)
    if vectors is not None:
        vectors.to(next(model.parameters()).device)
    with attached(model, vectors, runner.adapter) if vectors is not None else nullcontext():
        predictions = runner.predict([([], q) for q in items], instruction=instruction,
                                     desc=vectors.method if vectors is not None else "zero-shot")
    by_type: dict[str, list[float]] = defaultdict(list)
    for q, p in zip(items, predictions, strict=True):
        acc = item_accuracy(p, q)
        by_type[q.question_type].append(acc)
        if samples_out is not None:
            samples_out.append({"question_id": q.question_id, "question": q.question,
                                "answer": q.multiple_choice_answer, "prediction": p, "accuracy": acc})
    accs = [a for values in by_type.values() for a in values]
    out = {"accuracy": sum(accs) / len(accs) if accs else 0.0, "queries": float(len(items))}
    out.update({f"accuracy/{t}": sum(v) / len(v) for t, v in sorted(by_type.items())})
    return out
