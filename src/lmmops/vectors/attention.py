"""Head-level shifts inside self-attention: the `lmmops_mimic` attention function of transformers 5.

transformers 5 attention modules compute q, k, v (after RoPE, after q/k norms, after the KV-cache update)
and hand them to a pluggable function looked up by name in `ALL_ATTENTION_FUNCTIONS` with
`self.config._attn_implementation`; the function returns the attention output laid out as
(batch, seq, heads, head_dim), which the module reshapes and feeds to `o_proj`. This module registers one
such function, "lmmops_mimic", and a matching mask function (an always-materialised boolean mask, so that
the causal, padding and sliding-window structure the model asks for is visible to it).

`attention_shifts(adapter, shifts)` switches the language model's attention config to "lmmops_mimic" for
the duration of a block and gives each decoder layer's self-attention module one `Shift`. For a module with
a shift, the function computes, from ONE q.K^T per layer (eager-style, exact autograd):

    scores = q.k^T * scaling + mask,  lse = logsumexp_j(scores),  out = softmax(scores) @ V

and then calls the shift with (q, K, V, out, lse); MimIC adds mu * v, the oracle adds the exact demo term,
the recorder stores K and V. logZ2 = lse therefore covers exactly the keys the query attends to: the same
causal, padding and sliding-window mask as the attention itself, in training and in cached decoding alike
(the reference code's unmasked training-time logZ2 is the defect PAPERS.md §4 names). Keys are repeated for
GQA (`repeat_kv`) before the scores. Modules without a shift that share the same config (Idefics v1's gated
cross-attention layers) are passed to transformers' own `sdpa_attention_forward` unchanged.

Per family (read in transformers 5.24's `modeling_*.py`; the tests run every family through it):
  idefics     IdeficsAttention (self-attention, no GQA, RoPE before the cache) calls the interface with the
              top-level IdeficsConfig; the gated cross-attention layers use the same class and config but get
              no shift (delegated to sdpa with their own image mask); the vision tower keeps its own config.
  idefics2    MistralAttention of the text model (text_config); passes `sliding_window`, which the mask
              function already encodes (create_sliding_window_causal_mask goes through the same interface).
  idefics3, llava, llama   LlamaAttention (text_config / config).
  qwen2_vl, qwen2_5_vl     Qwen2VL/Qwen2_5_VLAttention of the language model (text_config; M-RoPE applied
              before the call); the vision blocks use vision_config and are left untouched.
A family whose self-attention does not dispatch through the interface raises NotImplementedError.

Run: `python -m pytest tests/vectors -q`.

Departures from the paper: the scores are materialised (eager attention) instead of a fused kernel that
returns its log-sum-exp; this costs O(seq^2) memory per head like eager attention but no second q.K^T, and
its gradient through logZ2 is exact (the fused kernels' LSE outputs are not differentiable in torch).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmmops.models import ModelAdapter

ATTN_NAME = "lmmops_mimic"
_SHIFT_ATTR = "_lmmops_shift"


@dataclass(frozen=True)
class AttentionCall:
    """What one attention call saw and produced, for a shift. Shapes: (batch, heads, q_len, head_dim)."""

    query: torch.Tensor
    key: torch.Tensor  # repeated for GQA: (batch, heads, kv_len, head_dim)
    value: torch.Tensor
    output: torch.Tensor  # softmax(q.K^T * scaling + mask) @ V
    lse: torch.Tensor  # (batch, heads, q_len), float32: log of the softmax normaliser (logZ2)
    scaling: float


Shift = Callable[[AttentionCall], torch.Tensor]


def attention_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    scaling: float,
    is_causal: bool = False,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp from the same scores. Shapes (b, h, q, d) and (b, h, kv, d).

    `attention_mask` is boolean (True = attend) or additive float, broadcastable to (b, h, q, kv); None with
    `is_causal` masks causally, aligned to the end of the keys (decoding with a cache). Rows that attend to no
    key get output 0 and lse log(tiny) (finite, so nothing downstream turns into NaN).
    Returns (output (b, h, q, d) in value's dtype, lse (b, h, q) in float32).
    """
    scores = (torch.matmul(query, key.transpose(-1, -2)) * scaling).float()
    if attention_mask is None and is_causal and query.shape[-2] > 1:
        q_len, kv_len = query.shape[-2], key.shape[-2]
        rows = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
        attention_mask = rows >= torch.arange(kv_len, device=query.device)[None, :]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask.float()
    top = scores.amax(dim=-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(scores - top)
    total = weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    lse = (top + torch.log(total)).squeeze(-1)
    probs = weights / total
    if dropout > 0.0 and training:
        probs = nn.functional.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs.to(value.dtype), value), lse


def shifted_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered "lmmops_mimic" attention function (transformers' attention-interface signature)."""
    shift: Shift | None = getattr(module, _SHIFT_ATTR, None)
    if shift is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n_rep = int(getattr(module, "num_key_value_groups", 1))
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    output, lse = attention_with_lse(
        query, key, value, attention_mask, scaling=scale, is_causal=is_causal, dropout=dropout,
        training=module.training,
    )
    output = shift(AttentionCall(query=query, key=key, value=value, output=output, lse=lse, scaling=scale))
    return output.transpose(1, 2).contiguous(), None


def _materialised_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """sdpa's boolean mask, never skipped for plain causal attention (the shift needs to see the mask)."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register "lmmops_mimic" with transformers' attention and mask interfaces (idempotent)."""
    AttentionInterface.register(ATTN_NAME, shifted_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, _materialised_mask)


def _uses_attention_interface(module: nn.Module) -> bool:
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):  # no source to read: trust the module
        return True
    return "_attn_implementation" in source


def _set_implementation(config: Any, name: str) -> None:
    """Set `config._attn_implementation` to `name` without touching its sub-configs (vision, perceiver)."""
    subs = {}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            subs[key] = sub._attn_implementation
    config._attn_implementation = name
    for key, value in subs.items():
        getattr(config, key)._attn_implementation = value


@contextmanager
def attention_shifts(adapter: ModelAdapter, shifts: Sequence[Shift | None]) -> Iterator[None]:
    """Install one shift per decoder layer's self-attention (None: plain attention) for the block."""
    modules = adapter.self_attn_modules
    if len(shifts) != len(modules):
        raise ValueError(f"{adapter.family}: {len(shifts)} shifts for {len(modules)} self-attention layers")
    for module in modules:
        if not _uses_attention_interface(module) or getattr(module, "config", None) is None:
            raise NotImplementedError(
                f"{adapter.family}: {type(module).__name__} does not dispatch through transformers' attention "
                f"interface, so head-level shifts (MimIC, oracle) cannot be installed on it"
            )
        if hasattr(module, _SHIFT_ATTR):
            raise RuntimeError(f"{adapter.family}: a shift is already attached to {type(module).__name__}")
    register()
    configs: dict[int, Any] = {}
    for module in modules:
        configs[id(module.config)] = module.config
    text_config = getattr(adapter.text_model, "config", None)
    if text_config is not None:
        configs[id(text_config)] = text_config  # the config the decoder stack builds its masks from
    previous = [(config, config._attn_implementation) for config in configs.values()]
    try:
        for config in configs.values():
            _set_implementation(config, ATTN_NAME)
        for module, shift in zip(modules, shifts, strict=True):
            if shift is not None:
                setattr(module, _SHIFT_ATTR, shift)
        yield
    finally:
        for module in modules:
            if hasattr(module, _SHIFT_ATTR):
                delattr(module, _SHIFT_ATTR)
        for config, name in previous:
            _set_implementation(config, name)


register()
