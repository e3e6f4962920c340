"""The exact shift view of ICL (docs/methods.md §4): a zero-shot forward plus the demo shift equals the k-shot run.

For one head and a query token with attention query q, keys/values split into the demonstrations' (K_D, V_D)
and the rest (K, V: the prefix and the query's own tokens),

    SA(q, [K_D; K], [V_D; V]) = SA(q, K, V) + mu * (SA(q, K_D, V_D) - SA(q, K, V)),   mu = Z1 / (Z1 + Z2),

Z1 = sum exp(q.k_D / sqrt(d_h)), Z2 = sum over the keys of the zero-shot prompt. `check_shift_exactness`
tests it on a real model, at every layer and head at once:

1. the k-shot prompt (prefix + demos + query) runs on the plain model; the inputs of every self-attention's
   o_proj at the query tokens (the attention outputs, all heads) and the text model's position ids are kept;
2. the same prompt runs again through the "lmmops_mimic" attention function, recording every layer's K, V
   (after RoPE, repeated for GQA); K_D, V_D are their slices at the demo tokens;
3. the zero-shot prompt (prefix + query, no demos) runs with, at every layer, the oracle shift
   o = SA(q,K,V) + sigmoid(logZ1 - logZ2) * (SA(q,K_D,V_D) - SA(q,K,V)), where SA(q,K_D,V_D) and logZ1 are
   computed inside this forward from its own q and the recorded K_D, V_D, and logZ2 is the attention's own
   log-sum-exp (`lmmops.vectors.attention`); the prefix tokens (BOS, instruction) precede the demos in the
   k-shot prompt, so they are not shifted (mu = 0 there: causality);
4. the o_proj inputs of the query tokens are compared with step 1's, layer by layer (relative Frobenius
   error), and so are the logits.

Positions: the query sits at other positions in the k-shot prompt than in the zero-shot prompt, and RoPE
(and Qwen's M-RoPE, whose text positions after an image jump by the image's grid) makes q.k depend on them.
The zero-shot forward is therefore given the k-shot position ids of its tokens (the prefix's, then the
query's; for M-RoPE all three rows of the 3D ids), taken from what the k-shot forward passed to the text
model (arange when it passed none, as llama-style text models then count from 0 on an unpadded row). The
keys of the prefix and the query then carry exactly their k-shot rotations, so the identity is exact. The
attention mask is passed explicitly, so the jump in the position ids is not read as sequence packing.

Other paths from the demonstrations to the query are carried over by the adapter
(`ModelAdapter.query_context_inputs`): in Idefics v1 the query's first token, `<fake_token_around_image>`,
cross-attends to the last demo image in the k-shot prompt (gated cross-attention, not self-attention), so
its zero-shot inputs keep that token's k-shot image mask and that image; without it the shift identity
alone is not exact for Idefics v1 (the test suite measures how far off it is).

Run: `python -m pytest tests/vectors/test_oracle.py -q` (every family, float32 tiny models, <= 1e-4).

Departures from the paper: none in the maths. The demo span includes the separators between items (all
tokens between the prefix and the query); the prefix (BOS, instruction) stays in the zero-shot prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmmops.models import ModelAdapter, PromptAlignmentError, adapter_for
from lmmops.models.prompt import ItemLike, PromptBatch
from lmmops.vectors.attention import AttentionCall, attention_shifts, attention_with_lse


class KeyValueRecorder:
    """A shift that changes nothing and keeps the layer's keys and values (after RoPE, repeated for GQA)."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        self.key, self.value = call.key.detach(), call.value.detach()
        return call.output


class OracleShift:
    """The exact demo shift of one layer from the demonstrations' keys and values (1, heads, n_demo, d_h).

    The demonstrations follow the prefix in the k-shot prompt, so the first `n_prefix` tokens of the zero-shot
    sequence (BOS, instruction) never see them and are not shifted. Rows are placed in the sequence by
    aligning the queries to the end of the keys, which also holds for decoding steps with a KV cache.
    """

    def __init__(self, demo_key: torch.Tensor, demo_value: torch.Tensor, n_prefix: int):
        self.demo_key = demo_key
        self.demo_value = demo_value
        self.n_prefix = n_prefix

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        key = self.demo_key.to(call.query.device, call.query.dtype)
        value = self.demo_value.to(call.value.device, call.value.dtype)
        demo_out, log_z1 = attention_with_lse(call.query, key, value, scaling=call.scaling)
        q_len, kv_len = call.query.shape[-2], call.key.shape[-2]
        rows = torch.arange(q_len, device=call.query.device) + (kv_len - q_len)
        sees_demos = (rows >= self.n_prefix)[:, None]
        mu = torch.sigmoid(log_z1 - call.lse)[..., None] * sees_demos
        out = call.output.float()
        return (out + mu * (demo_out.float() - out)).to(call.output.dtype)


@contextmanager
def o_proj_inputs(adapter: ModelAdapter) -> Iterator[list[torch.Tensor | None]]:
    """Record the input of every self-attention's o_proj (the attention output of all heads, before o_proj)."""
    slots: list[torch.Tensor | None] = [None] * adapter.num_layers

    def hook_for(i: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            slots[i] = args[0].detach()

        return hook

    handles = [proj.register_forward_pre_hook(hook_for(i)) for i, proj in enumerate(adapter.out_projections)]
    try:
        yield slots
    finally:
        for h in handles:
            h.remove()


@contextmanager
def text_position_ids(adapter: ModelAdapter) -> Iterator[list[torch.Tensor | None]]:
    """Record the `position_ids` the language model's decoder stack is called with (None when not given)."""
    seen: list[torch.Tensor | None] = []

    def hook(_module: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs.get("position_ids"))

    handle = adapter.text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


@dataclass
class ShiftExactness:
    """Attention outputs (per layer, (query tokens, heads * d_h)) and logits of the k-shot and shifted runs."""

    family: str
    kshot_outputs: list[torch.Tensor]
    shifted_outputs: list[torch.Tensor]
    kshot_logits: torch.Tensor
    shifted_logits: torch.Tensor

    @property
    def layer_errors(self) -> list[float]:
        return [_relative_error(s, k) for s, k in zip(self.shifted_outputs, self.kshot_outputs, strict=True)]

    @property
    def max_error(self) -> float:
        return max(self.layer_errors)

    @property
    def logits_error(self) -> float:
        return _relative_error(self.shifted_logits, self.kshot_logits)


def _span_index(batch: PromptBatch, *names: str) -> torch.Tensor:
    spans = {"prefix": batch.prefix_span, "demos": batch.demo_span, "query": batch.query_span}
    return torch.cat([torch.arange(*spans[n]) for n in names])


@torch.no_grad()
def check_shift_exactness(
    model: nn.Module,
    processor: Any,
    demos: Sequence[ItemLike],
    query: ItemLike,
    *,
    with_answer: bool = True,
    instruction: str | None = None,
    shift: bool = True,
    keep_context: bool = True,
) -> ShiftExactness:
    """Run steps 1-4 of the module docstring for one query and its demonstrations.

    `shift=False` runs the zero-shot forward without the oracle shift and `keep_context=False` without the
    adapter's non-self-attention k-shot context (both only to measure what each part contributes).
    """
    if not demos:
        raise ValueError("the exactness check needs at least one demonstration")
    adapter = adapter_for(model, processor)
    param = next(model.parameters())
    kshot = adapter.build_prompt(demos, query, with_answer=with_answer, instruction=instruction)
    zero = adapter.build_prompt([], query, with_answer=with_answer, instruction=instruction)
    kshot, zero = kshot.to(param.device, param.dtype), zero.to(param.device, param.dtype)
    keep = _span_index(kshot, "prefix", "query").to(param.device)
    if not torch.equal(zero.input_ids[0], kshot.input_ids[0, keep]):
        raise PromptAlignmentError(f"{adapter.family}: the zero-shot prompt is not the k-shot prompt without demos")
    if not bool(kshot.attention_mask.bool().all()):
        raise ValueError("the k-shot prompt must be a single unpadded row")
    was_training = model.training
    model.eval()
    try:
        with o_proj_inputs(adapter) as kshot_attn, text_position_ids(adapter) as positions:
            kshot_logits = model(**kshot.model_inputs()).logits
        recorders = [KeyValueRecorder() for _ in range(adapter.num_layers)]
        with attention_shifts(adapter, recorders):
            model(**kshot.model_inputs())
        missing = [i for i, r in enumerate(recorders) if r.key is None]
        if missing:
            raise RuntimeError(f"{adapter.family}: self-attention layers {missing} never reached the shift function")
        seq = kshot.input_ids.shape[1]
        position_ids = positions[0] if positions and positions[0] is not None else torch.arange(seq)[None]
        position_ids = position_ids.to(param.device)
        d0, d1 = kshot.demo_span
        n_prefix = kshot.prefix_span[1] - kshot.prefix_span[0]
        shifts = [OracleShift(r.key[:, :, d0:d1], r.value[:, :, d0:d1], n_prefix) for r in recorders]  # type: ignore[index]
        inputs = adapter.query_context_inputs(kshot, zero) if keep_context else zero.model_inputs()
        inputs["position_ids"] = position_ids[..., keep]
        with attention_shifts(adapter, shifts if shift else [None] * len(shifts)), o_proj_inputs(adapter) as got:
            shifted_logits = model(**inputs).logits
    finally:
        model.train(was_training)
    q0, q1 = kshot.query_span
    z0, z1 = zero.query_span
    return ShiftExactness(
        family=adapter.family,
        kshot_outputs=[a[0, q0:q1] for a in kshot_attn],  # type: ignore[index]
        shifted_outputs=[a[0, z0:z1] for a in got],  # type: ignore[index]
        kshot_logits=kshot_logits[0, q0:q1],
        shifted_logits=shifted_logits[0, z0:z1],
    )
