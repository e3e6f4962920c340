"""Function vectors (Todd et al. 2024, "Function Vectors in Large Language Models"), through the family adapter.

Fit (`fit_function_vector` in `lmmops.vectors.baselines`, from the pieces here):
  1. mean head outputs: `prompts` clean k-shot prompts from the pool (instruction + `shots` demos + a query, no
     answer); at every layer l the self-attention's output BEFORE o_proj (the input of `o_proj`, per head h a
     d_h-slice) at the last token, averaged over the prompts: abar_{l,h} (`common.last_token_head_outputs`);
  2. head scores, the average indirect effect (AIE) as in the paper: `corrupted_prompts` other k-shot prompts
     whose demonstration answers are shuffled among the demonstrations (the query keeps its true answer as the
     target). For every head (l, h), one forward of the corrupted batch with head h of layer l's output at the
     last prompt token replaced by abar_{l,h}; AIE_{l,h} = mean over prompts of
     P(first answer token | patched) - P(first answer token | corrupted) (`head_indirect_effects`,
     L*H forwards of the corrupted batch, each one whole-tensor index_put; no per-token loops);
  3. the vector: the top-K heads by AIE (`function_vector.heads`), each head's mean output mapped into the
     residual stream by its own slice of o_proj (W_O[:, h*d_h:(h+1)*d_h] @ abar_{l,h}, no bias), summed: v in R^d;
  4. the layer L where v is added: chosen on the validation split among `function_vector.layers` (default all;
     ties: the lower layer), by zero-shot accuracy with v added. The test split is never read here.

Inference (`attach_function_vector`): a forward hook on decoder layer L ADDS v to the output (the residual
stream after layer L) at the last prompt token in the prefill forward and, with `on_generated` (the default),
also at every generated token (each cached decoding step's one new token) - the answers here can be several
tokens ("top left") and the paper's natural-text evaluation keeps the vector on during generation too.

Size (`trainable_params`): d, the one vector added (nothing is trained).

Departures from the paper: the paper fixes L = |L|/3 and K = 10 for 6B-70B models; here L is chosen on the
validation split and K is a config value (the tiny default model has 4 layers x 4 heads). AIE is measured on
this task's own corrupted prompts (the paper averages it over many tasks to find "universal" heads). The
corrupted prompts shuffle answers among the demos of one prompt (a permutation, so some may stay in place).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from lmmops.models import ModelAdapter
from lmmops.vectors.baselines.common import (
    PromptSpec,
    batches,
    build_right_padded,
    hooked,
    last_prompt_positions,
    on_last_token,
)


def shuffled_labels(specs: Sequence[PromptSpec], *, seed: int) -> list[PromptSpec]:
    """The prompts with each one's demonstration answers permuted among its demonstrations (seeded)."""
    rng = np.random.default_rng([seed, 2])
    out = []
    for demos, query in specs:
        answers = [d.answer for d in demos]
        order = rng.permutation(len(demos))
        out.append(([replace(d, answer=answers[j]) for d, j in zip(demos, order, strict=True)], query))
    return out


def _patch_head(mean: torch.Tensor, head: int, head_dim: int, rows: torch.Tensor, positions: torch.Tensor) -> Any:
    """A pre-hook on o_proj that writes `mean` into head `head`'s slice at (rows, positions)."""
    cols = torch.arange(head * head_dim, (head + 1) * head_dim, device=rows.device)

    def pre_hook(_module: nn.Module, args: Any) -> Any:
        x = args[0]
        patched = x.index_put((rows[:, None], positions[:, None], cols[None, :]),
                              mean.to(x.dtype).expand(len(rows), head_dim))
        return (patched, *args[1:])

    return pre_hook


@torch.no_grad()
def head_indirect_effects(model: nn.Module, adapter: ModelAdapter, corrupted: Sequence[PromptSpec],
                          mean_heads: torch.Tensor, *, instruction: str | None, batch_size: int) -> torch.Tensor:
    """(layers, heads): the average indirect effect of each head's mean output on the corrupted prompts.

    `corrupted` are k-shot prompts whose query carries its true answer (only its first token is read: the
    probability the logits of the token before it give it). `mean_heads` is (layers, heads, head_dim).
    """
    projections = adapter.out_projections
    layers, heads, head_dim = mean_heads.shape
    total = torch.zeros(layers, heads)
    for chunk in batches(corrupted, batch_size):
        batch = build_right_padded(adapter, chunk, instruction=instruction, with_answer=True)
        rows = torch.arange(len(batch), device=batch.input_ids.device)
        positions = last_prompt_positions(batch, with_answer=True)
        targets = batch.input_ids[rows, positions + 1]

        def target_prob(batch: Any = batch, rows: torch.Tensor = rows, positions: torch.Tensor = positions,
                        targets: torch.Tensor = targets) -> torch.Tensor:
            logits = model(**batch.model_inputs()).logits[rows, positions].float()
            return torch.softmax(logits, dim=-1)[rows, targets]

        base = target_prob()
        for layer in range(layers):
            for head in range(heads):
                hook = _patch_head(mean_heads[layer, head], head, head_dim, rows, positions)
                handle = projections[layer].register_forward_pre_hook(hook)
                try:
                    total[layer, head] += (target_prob() - base).sum().cpu()
                finally:
                    handle.remove()
    return total / len(corrupted)


def function_vector_from_heads(adapter: ModelAdapter, mean_heads: torch.Tensor, scores: torch.Tensor,
                               top_k: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """sum over the top-K heads by score of W_O[l][:, head slice] @ mean_heads[l, h] (float32), and the heads."""
    projections = adapter.out_projections
    _layers, heads, head_dim = mean_heads.shape
    k = max(1, min(top_k, scores.numel()))
    top = torch.topk(scores.flatten(), k).indices.tolist()
    chosen = [(i // heads, i % heads) for i in top]
    vector = torch.zeros(adapter.hidden_size)
    for layer, head in chosen:
        weight = projections[layer].weight[:, head * head_dim : (head + 1) * head_dim].detach().float().cpu()
        vector += weight @ mean_heads[layer, head].cpu()
    return vector, chosen


@contextmanager
def attach_function_vector(adapter: ModelAdapter, vector: torch.Tensor, layer: int, *,
                           on_generated: bool) -> Iterator[None]:
    """Add `vector` to decoder layer `layer`'s output at the last prompt token (and generated tokens)."""
    if vector.shape != (adapter.hidden_size,):
        raise ValueError(f"function vector of shape {tuple(vector.shape)} for hidden size {adapter.hidden_size}")

    def add(last: torch.Tensor) -> torch.Tensor:
        return last + vector.to(last.device, last.dtype)

    with hooked([adapter.decoder_layers[layer]], [on_last_token(add, prefill_only=not on_generated)]):
        yield
