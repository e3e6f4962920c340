"""The bootstrap training loop: data, model, optimiser, per-group losses, checkpoints and resume.

`train(cfg, data_dir, checkpoint_dir)` loads the train corpora, builds the processor and the model, and runs
`cfg.steps` AdamW steps; each step's batch depends only on (seed, step), so a resumed run sees the same data.
The state is saved atomically under `<checkpoint_dir>/<checkpoint_key>/last.pt` (a hash of the config, the data
and this package's source) and resumed from there.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from lmmops.config import BootstrapConfig, to_dict
from lmmops.data.loaders import load_deepscaler
from lmmops.models.bootstrap.batches import check_template, collate, encode, sample_batch, sub_batches
from lmmops.models.bootstrap.corpus import corpus_texts, drill_equations, extra_math_rows, load_corpora
from lmmops.models.bootstrap.figures import FigurePools, figure_pools
from lmmops.models.bootstrap.model import IMAGE_SIZE, build_model, build_processor, image_stats

# Keys of BootstrapConfig that do not change what is trained (left out of the checkpoint hash).
_BOOKKEEPING = {"out_dir", "checkpoint_dir", "registered_name", "checkpoint_every", "log_every", "threads"}


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
    figures: FigurePools = field(default_factory=lambda: FigurePools([], []))  # the generated figures trained on


def checkpoint_key(cfg: BootstrapConfig, data_dir: Path) -> str:
    """Hash of everything that decides the trained weights: the config (minus bookkeeping), the data and
    the trainer's own source, every module of this package (a change to how rows are built or labelled must
    not resume an old run)."""
    params = {k: v for k, v in to_dict(cfg).items() if k not in _BOOKKEEPING and not k.startswith("eval_")}
    manifest = data_dir / "manifest.json"
    data = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else str(data_dir.resolve())
    sources = sorted(Path(__file__).parent.glob("*.py"))
    code = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()
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
    corpora.figures = figure_pools(cfg, data_dir, IMAGE_SIZE)
    train_images = sorted({it.image_path for items in [corpora.vqa, *corpora.icl.values()] for it in items})
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
        rows = sample_batch(rng, corpora, enc, tok, cfg)
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
        data_sizes={"icl_items": sum(map(len, corpora.icl.values())), "vqa_items": len(corpora.vqa),
                    "describe_items": len(corpora.describe), "math_rows": len(corpora.math),
                    "perception_figures": len(corpora.figures.perception),
                    "multimodal_examples": len(corpora.figures.reasoning)},
        figures=corpora.figures,
    )
