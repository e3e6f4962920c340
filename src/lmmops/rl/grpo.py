"""A minimal on-policy GRPO loop for rule-based RL (LMM-R1, docs/methods.md §8): sample G completions per prompt,
reward them with the scorers of record, one Adam step per rollout batch. The first piece of the RL trainer.

    items = [RLItem(prompt, image, answer), ...]
    history = train_grpo(model, processor, items, GrpoConfig(seconds=360), rng=np.random.default_rng(0))

One step: `prompts_per_step` items drawn at random, `group_size` completions each sampled at `temperature` with the
non-text special tokens suppressed (`lmmops.evaluation.reasoning.completion_ids`), reward 0.5 * format + accuracy
(`lmmops.eval.scoring`), advantages `grpo_advantages`, then one clipped-policy-gradient Adam step on the completion
tokens (`ppo_policy_loss` with the sampling policy as the old policy: one step per rollout, so the ratio is 1 and
the gradient is the policy gradient). No reference model and no KL term; gradient norm clipped to 1.

Departures from LMM-R1's trainer (OpenRLHF): no critic, no reference, no minibatch epochs, no KL, and no
vLLM: this is the recipe measured to move the embedded default within minutes on 2 CPU cores (docs/experiments.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmmops.eval.scoring import format_reward, verify_batch
from lmmops.evaluation.reasoning import completion_ids
from lmmops.rl.algorithms import grpo_advantages, ppo_policy_loss


@dataclass(frozen=True)
class RLItem:
    prompt: str  # with the image placeholder first when there is an image
    image: Image.Image | None
    answer: str  # the gold answer the accuracy reward verifies against


@dataclass(frozen=True)
class GrpoConfig:
    prompts_per_step: int = 32
    group_size: int = 8
    lr: float = 5e-5
    temperature: float = 1.0
    max_new_tokens: int = 128  # the longest figure trace (a quadrilateral worked out) is ~95 tokens
    seconds: float = 360.0  # wall-clock budget; training stops at the first step that ends past it
    max_steps: int = 0  # 0 = no step limit
    format_weight: float = 0.5


def rewards_of(completions: Sequence[str], answers: Sequence[str], format_weight: float = 0.5
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total reward, format reward, accuracy) per completion; an unverifiable gold counts as accuracy 0."""
    fmt = torch.tensor([format_reward(c) for c in completions])
    acc = torch.tensor([float(a or 0.0) for a in verify_batch(list(completions), list(answers))])
    return format_weight * fmt + acc, fmt, acc


def _prompt_inputs(processor: Any, items: Sequence[RLItem]) -> dict[str, torch.Tensor]:
    prompts = [it.prompt for it in items]
    if all(it.image is None for it in items):
        return dict(processor.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt"))
    return dict(processor(text=prompts, images=[it.image for it in items], padding=True, padding_side="left",
                          return_tensors="pt"))


def completion_logprobs(model: Any, prompt: dict[str, torch.Tensor], completions: torch.Tensor,
                        completion_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Log-probabilities [B, T] of the completion tokens under `model`, prompts repeated `group_size` times."""
    ids = torch.cat([prompt["input_ids"].repeat_interleave(group_size, 0), completions], dim=1)
    mask = torch.cat([prompt["attention_mask"].repeat_interleave(group_size, 0), completion_mask.long()], dim=1)
    extra = {k: v.repeat_interleave(group_size, 0) for k, v in prompt.items() if k == "pixel_values"}
    logits = model(input_ids=ids, attention_mask=mask, **extra).logits
    start = prompt["input_ids"].shape[1]
    logits = logits[:, start - 1 : -1].float()  # the positions that predict the completion tokens
    return torch.log_softmax(logits, dim=-1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)


def grpo_step(model: Any, processor: Any, optimizer: torch.optim.Optimizer, items: Sequence[RLItem],
              cfg: GrpoConfig) -> dict[str, float]:
    """One rollout batch and one Adam step; returns the step's statistics."""
    tok = processor.tokenizer
    model.eval()
    t0 = time.perf_counter()
    gen = completion_ids(model, processor, [it.prompt for it in items], max_new_tokens=cfg.max_new_tokens,
                         batch_size=len(items), temperature=cfg.temperature, samples=cfg.group_size,
                         images=[it.image for it in items] if items[0].image is not None else None)
    width = max(len(g) for g in gen)
    completions = torch.full((len(gen), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(gen), width))
    for i, g in enumerate(gen):
        stop = (g == tok.eos_token_id).nonzero()
        n = int(stop[0]) + 1 if len(stop) else len(g)  # through the first EOS
        completions[i, :n], mask[i, :n] = g[:n], 1.0
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    t1 = time.perf_counter()
    rewards, fmt, acc = rewards_of(texts, [it.answer for it in items for _ in range(cfg.group_size)],
                                   cfg.format_weight)
    advantages = grpo_advantages(rewards, cfg.group_size)
    model.train()
    logp = completion_logprobs(model, _prompt_inputs(processor, items), completions, mask, cfg.group_size)
    loss, _ = ppo_policy_loss(logp, logp.detach(), advantages, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.eval()
    spread = (rewards.view(-1, cfg.group_size).std(dim=1) > 0).float().mean()
    return {"reward": rewards.mean().item(), "format_reward": fmt.mean().item(), "accuracy": acc.mean().item(),
            "loss": loss.item(), "grad_norm": float(grad_norm), "groups_with_spread": spread.item(),
            "response_length": mask.sum(1).mean().item(), "rollout_seconds": t1 - t0,
            "update_seconds": time.perf_counter() - t1}


def train_grpo(model: Any, processor: Any, items: Sequence[RLItem], cfg: GrpoConfig, *, rng: np.random.Generator,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """GRPO steps on random batches of `items` until `cfg.seconds` (or `cfg.max_steps`) run out."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    while time.perf_counter() - start < cfg.seconds and not (cfg.max_steps and len(history) >= cfg.max_steps):
        picks = rng.choice(len(items), size=min(cfg.prompts_per_step, len(items)), replace=False)
        stats = grpo_step(model, processor, optimizer, [items[int(i)] for i in picks], cfg)
        stats["seconds"] = time.perf_counter() - start
        history.append(stats)
        if on_step:
            on_step(len(history), stats)
    return history
