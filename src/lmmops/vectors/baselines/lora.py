"""LoRA baseline (docs/methods.md §7: r 16, alpha 32, dropout 0.05 on q, k, v, o; lr 5e-4), with peft.

Targets (`lora_target_names`, `lora.scope`), given to peft as FULL module names (peft matches a listed name
exactly or as a dotted suffix, which a full name from the root can only match exactly):
  all_qkvo (default)  every nn.Linear named q_proj/k_proj/v_proj/o_proj anywhere in the model: the modules the
                      reference's bare `target_modules=["q_proj","k_proj","v_proj","o_proj"]` selects (vision
                      tower, gated cross-attention and perceiver included; Idefics-9b: the talk's 24,993,792);
  decoder_self_attn   only the q/k/v/o_proj of the language model's decoder self-attention
                      (`adapter.self_attn_modules`).
Both come from `lmmops.vectors.params.lora_target_modules`, which `lmmops params-table` counts with.

Training (`train_lora`): the model is wrapped in place by `peft.get_peft_model` (LoRA A initialised from the
seed, B = 0, so the wrapped model starts equal to the base model); every epoch reads the pool once in a seeded
order, in batches of `lora.batch_size` zero-shot prompts instruction + image + `Question: q Short answer: a`
(the inference template, right padded; the batches are formed once from a seeded permutation and visited in a
new seeded order every epoch), loss = the LM loss on the answer tokens only
(`lmmops.vectors.train.answer_lm_loss`); AdamW (lr 5e-4, `weight_decay`) on the LoRA matrices only, linear
warm-up over `warmup_share` of the steps then cosine decay (`lmmops.vectors.train.lr_factor`), gradient
clipping, model in train mode (LoRA dropout on). After every epoch the validation split is answered zero-shot
with the adapters in place (eval mode); the LoRA state of the best epoch is kept (ties: the later epoch).

Inference (`injected_lora`): the kept state is injected again (unmerged: base weight + B A x in every targeted
forward, so latency is above zero-shot) and removed with `unload()` on exit. The base weights are never
written: peft wraps each targeted nn.Linear and `unload()` puts the same module objects back (no merge), so
they stay bit-identical; the base parameters' requires_grad flags are restored.

Size (`trainable_params`): the LoRA scalars, sum over the scope's targets of r * (in_features + out_features).

Departures from the papers' LoRA baseline: selection of the epoch on our validation split; trained on this
task pool only (one adapter per task, like the vectors); the tiny default model gets a few epochs; batches keep
their composition across epochs (only their order is reshuffled).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from lmmops.config import LoraScope, VectorBaselinesConfig
from lmmops.data.schemas import VQAItem
from lmmops.models import ModelAdapter
from lmmops.vectors.base import frozen
from lmmops.vectors.baselines.common import accuracy_with, build_right_padded
from lmmops.vectors.data import DemoPool
from lmmops.vectors.params import DEFAULT_LORA_SCOPE, LORA_TARGETS, lora_target_modules
from lmmops.vectors.train import answer_lm_loss, lr_factor


def lora_target_names(model: nn.Module, adapter: ModelAdapter, *, scope: LoraScope = DEFAULT_LORA_SCOPE) -> list[str]:
    """Full names (from `model`'s root) of the q/k/v/o projections that `scope` adapts (module docstring)."""
    targets = [name for name, _ in lora_target_modules(model, scope=scope, adapter=adapter)]
    if not targets:
        raise NotImplementedError(f"{adapter.family}: no {'/'.join(LORA_TARGETS)} nn.Linear for LoRA scope {scope}")
    return targets


def lora_config(cfg: VectorBaselinesConfig, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, bias="none")


@contextmanager
def injected_lora(model: nn.Module, config: Any, state: dict[str, torch.Tensor] | None = None, *,
                  seed: int = 0) -> Iterator[Any]:
    """`model` with LoRA adapters injected in place (a PeftModel around it is yielded); `state` (peft's adapter
    state dict) is loaded when given, else the adapters start from peft's seeded init. Removed on exit."""
    from peft import get_peft_model, set_peft_model_state_dict

    with frozen(model):  # peft turns requires_grad off on the base parameters: restore the flags after
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
            # peft 0.21 calls transformers' deprecated `is_gradient_checkpointing`: not ours to fix, only noise
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(seed)
            peft_model = get_peft_model(model, config)
        try:
            if state is not None:
                result = set_peft_model_state_dict(peft_model, state)
                if result.unexpected_keys:
                    raise ValueError(f"LoRA state keys not in the model: {result.unexpected_keys[:5]}")
                missing = [k for k in result.missing_keys if "lora_" in k]
                if missing:  # injected adapters the state does not cover (e.g. another scope): refuse, not B = 0
                    raise ValueError(f"LoRA adapters without a state (targets differ from the state's): {missing[:5]}")
            yield peft_model
        finally:
            peft_model.unload()  # the original nn.Linear objects go back; nothing merged into them


def lora_trainable_count(peft_model: Any) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


def train_lora(
    cfg: VectorBaselinesConfig, model: nn.Module, processor: Any, adapter: ModelAdapter, train_items: list[VQAItem],
    val_items: list[VQAItem],
) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """Train LoRA on the pool (module docstring); returns (best epoch's adapter state, trainable count, choice)."""
    from peft import get_peft_model_state_dict

    lc = cfg.lora
    pool = DemoPool(train_items)
    per_epoch = math.ceil(len(pool) / lc.batch_size)
    total = per_epoch * lc.epochs
    warmup = round(lc.warmup_share * total)
    config = lora_config(cfg, lora_target_names(model, adapter, scope=lc.scope))
    device = next(model.parameters()).device
    was_training = model.training
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    val_scores: list[float] = []
    # The batches are formed once (a seeded permutation of the pool cut into batch_size pieces) and each epoch
    # visits them in a new seeded order: building prompts (the processor) costs more than the tiny default
    # model's forward and backward, so re-forming batches every epoch would double the stage's time.
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(pool))
    prebuilt = [build_right_padded(adapter, [([], pool.prompt_item(int(i))) for i in order[b : b + lc.batch_size]],
                                   instruction=cfg.instruction, with_answer=True, close_answer=True)
                for b in range(0, len(pool), lc.batch_size)]
    # LoRA dropout draws from the global torch RNG: seed it, in a fork (the caller's stream is left as it was), so
    # that the same config, pool and base model give the same adapter in every run.
    with (injected_lora(model, config, seed=cfg.seed) as peft_model,
          torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])):
        torch.manual_seed(cfg.seed)
        params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        count = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=lc.lr, weight_decay=lc.weight_decay)
        step = 0
        try:
            for epoch in range(lc.epochs):
                model.train()
                for b in np.random.default_rng([cfg.seed, 4, epoch]).permutation(per_epoch):
                    batch = prebuilt[int(b)]
                    for group in optimizer.param_groups:
                        group["lr"] = lc.lr * lr_factor(step, total, warmup)
                    optimizer.zero_grad(set_to_none=True)
                    logits = model(**batch.model_inputs()).logits
                    loss = answer_lm_loss(logits, batch.answer_mask, batch.input_ids)
                    if not bool(torch.isfinite(loss)):
                        raise FloatingPointError(f"LoRA epoch {epoch + 1} step {step + 1}: loss {loss.item()}")
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, lc.max_grad_norm)
                    optimizer.step()
                    step += 1
                model.eval()
                acc = accuracy_with(model, processor, val_items, _nothing, instruction=cfg.instruction,
                                    batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
                val_scores.append(acc)
                if best is None or acc >= best[0]:  # ties: the later (longer trained) epoch
                    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
                    best = (acc, epoch + 1, state)
        finally:
            model.train(was_training)
    assert best is not None
    return best[2], count, {"epoch": best[1], "val_accuracy": best[0], "val_accuracy_per_epoch": val_scores,
                            "steps": total, "targets": len(config.target_modules)}


@contextmanager
def _nothing() -> Iterator[None]:
    yield
