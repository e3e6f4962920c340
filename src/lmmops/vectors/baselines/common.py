"""What the baselines share: prompts from a task pool, last-token captures, hooks, validation-split selection.

Prompts: `kshot_prompts` draws (demos, query) specs from one task's pool with `lmmops.vectors.data.sample_step`
(the same rule as the LIVE/MimIC teacher: `shots` demos with replacement from the pool minus the query), and
`query_prompts` gives each pool item alone (the zero-shot template). Captures (`last_token_outputs`,
`last_token_inputs`) run right-padded batches (every row's real tokens at positions 0..n-1, exactly as that
prompt alone, which is also how `generate()` numbers a left-padded batch) and gather each row's last real
token with one index operation. `on_last_token` builds the forward hooks of the task and function vectors:
it edits position -1 of a decoder layer's output, which in a left-padded generation batch is every row's last
prompt token in the prefill forward and the new token in each cached decoding step (sequence length 1).
`select_on_val` evaluates candidates on the validation split only and keeps the best (ties: the first).

Run: used by the baseline modules; `python -m pytest tests/vectors/test_baselines.py -q`.

Departures: none of their own (see each baseline module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from lmmops.data.schemas import VQAItem
from lmmops.models import ICLItem, ModelAdapter, PromptBatch
from lmmops.vectors.data import DemoPool, sample_step
from lmmops.vectors.train import evaluate_vectors

PromptSpec = tuple[list[ICLItem], ICLItem]
T = TypeVar("T")


def kshot_prompts(pool: DemoPool, *, shots: int, count: int, seed: int, stream: int = 0) -> list[PromptSpec]:
    """`count` (demos, query) specs (at most the pool size): distinct queries, `shots` demos each, seeded.

    `stream` separates independent draws of the same seed (e.g. the function vector's clean and corrupted
    prompts); it is the `step` of `sample_step`, so the draws are a function of (seed, stream) only.
    """
    draws = sample_step(pool.question_ids, batch_size=count, shots=shots, seed=seed, step=stream)
    return pool.prompts(draws)


def query_prompts(pool: DemoPool, count: int, *, seed: int) -> list[PromptSpec]:
    """`count` pool items (distinct, seeded order) as zero-shot specs (no demonstrations), answers kept."""
    specs = kshot_prompts(pool, shots=0, count=count, seed=seed)
    return [([], query) for _demos, query in specs]


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def batches(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def build_right_padded(adapter: ModelAdapter, specs: Sequence[PromptSpec], *, instruction: str | None,
                       with_answer: bool = False, close_answer: bool = False) -> PromptBatch:
    """A right-padded prompt batch on the model's device and dtype (positions as each prompt alone);
    `close_answer`: the separator after the answer is part of the answer span (see `build_prompts`)."""
    device, dtype = model_device_dtype(adapter.model)
    batch = adapter.build_prompts(list(specs), with_answer=with_answer, instruction=instruction, padding_side="right",
                                  close_answer=close_answer)
    return batch.to(device, dtype)


def last_prompt_positions(batch: PromptBatch, *, with_answer: bool = False) -> torch.Tensor:
    """Per row, the position of the last prompt token: the end of the query, or (with an answer) the token
    before the answer, whose logits predict the answer's first token."""
    spans = batch.answer_spans if with_answer else batch.query_spans
    ends = [span[0] if with_answer else span[1] for span in spans]  # type: ignore[index]
    return torch.tensor(ends, device=batch.input_ids.device) - 1


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def captured(modules: Sequence[nn.Module], *, inputs: bool = False) -> Iterator[list[torch.Tensor | None]]:
    """Record each module's output (or, with `inputs`, its first positional input) of the last forward."""
    slots: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(i: int) -> Any:
        if inputs:
            def pre_hook(_module: nn.Module, args: Any) -> None:
                slots[i] = args[0]

            return pre_hook

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            slots[i] = _first(output)

        return hook

    register = (lambda m, h: m.register_forward_pre_hook(h)) if inputs else (lambda m, h: m.register_forward_hook(h))
    handles = [register(m, hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield slots
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _last_token(model: nn.Module, adapter: ModelAdapter, specs: Sequence[PromptSpec], modules: Sequence[nn.Module],
                *, inputs: bool, instruction: str | None, with_answer: bool, batch_size: int) -> torch.Tensor:
    chunks = []
    for chunk in batches(specs, batch_size):
        batch = build_right_padded(adapter, chunk, instruction=instruction, with_answer=with_answer)
        rows = torch.arange(len(batch), device=batch.input_ids.device)
        last = last_prompt_positions(batch)
        with captured(modules, inputs=inputs) as slots:
            model(**batch.model_inputs())
        chunks.append(torch.stack([s[rows, last].float() for s in slots]))  # type: ignore[index]
    return torch.cat(chunks, dim=1)  # (modules, prompts, features)


def last_token_outputs(model: nn.Module, adapter: ModelAdapter, specs: Sequence[PromptSpec], *,
                       instruction: str | None, with_answer: bool = False, batch_size: int = 32) -> torch.Tensor:
    """(layers, prompts, hidden): every decoder layer's output (the residual stream after the layer) at each
    prompt's last token (float32). With `with_answer` the last token is the answer's last token."""
    return _last_token(model, adapter, specs, list(adapter.decoder_layers), inputs=False, instruction=instruction,
                       with_answer=with_answer, batch_size=batch_size)


def last_token_head_outputs(model: nn.Module, adapter: ModelAdapter, specs: Sequence[PromptSpec], *,
                            instruction: str | None, batch_size: int = 32) -> torch.Tensor:
    """(layers, prompts, heads, head_dim): every self-attention's per-head output before o_proj, last token."""
    flat = _last_token(model, adapter, specs, adapter.out_projections, inputs=True, instruction=instruction,
                       with_answer=False, batch_size=batch_size)
    return flat.unflatten(-1, (adapter.num_heads, adapter.head_dim))


def on_last_token(edit: Callable[[torch.Tensor], torch.Tensor], *, prefill_only: bool) -> Any:
    """A forward hook that replaces the output's position -1 by `edit(hidden[:, -1:])` (one tensor op).

    With `prefill_only`, cached decoding steps (sequence length 1) are left alone, so only the last prompt
    token of the first forward is edited; generation must use the KV cache (ICLRunner's `generate` does).
    """

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        hidden = _first(output)
        if prefill_only and hidden.shape[1] == 1:
            return None
        edited = torch.cat([hidden[:, :-1], edit(hidden[:, -1:]).to(hidden.dtype)], dim=1)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    return hook


@contextmanager
def hooked(modules: Sequence[nn.Module], hooks: Sequence[Any]) -> Iterator[None]:
    """Forward hooks on `modules` for the duration of the block (removed even on error)."""
    handles = [m.register_forward_hook(h) for m, h in zip(modules, hooks, strict=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def select_on_val(candidates: Sequence[T], score: Callable[[T], float]) -> tuple[T, list[float]]:
    """The candidate with the highest validation score (the first of equals) and every candidate's score."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    scores = [float(score(c)) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
    return candidates[best], scores


def check_layers(layers: Sequence[int], num_layers: int, what: str) -> list[int]:
    """The candidate layers (every layer when empty), each checked to exist."""
    chosen = list(layers) or list(range(num_layers))
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"{what}: layers {bad} out of range for a model with {num_layers} decoder layers")
    return chosen


def accuracy_with(model: nn.Module, processor: Any, items: Sequence[VQAItem], applied: Callable[[], Any], *,
                  instruction: str | None, batch_size: int, max_new_tokens: int) -> float:
    """VQA accuracy of zero-shot generation (`evaluate_vectors`' path: ICLRunner, the same template and
    instruction) with the intervention `applied()` (a context manager factory) in place."""

    with applied():
        result = evaluate_vectors(model, processor, None, items, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  instruction=instruction)
    return result["accuracy"]
