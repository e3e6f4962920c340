"""Head-level shifts inside self-attention: the `lmmops_mimic` attention function of transformers 5.

transformers 5 attention modules compute q, k, v (after RoPE, after q/k norms, after the KV-cache update)
and hand them to a pluggable function looked up by name in `ALL_ATTENTION_FUNCTIONS` with
`self.config._attn_implementation`; the function returns the attention output laid out as
(batch, seq, heads, head_dim), which the module reshapes and feeds to `o_proj`. This module registers one
such function, "lmmops_mimic", and a matching mask function (an always-materialised boolean mask, so that
the causal, padding and sliding-window structure the model asks for is visible to it).

`attention_shifts(adapter, shifts)` switches the language model's attention config to "lmmops_mimic" for
the duration of a block and gives each decoder layer's self-attention module one `Shift`. For a module with
a shift, the function computes the attention output and its log-sum-exp in ONE pass over the scores:

    scores = q.k^T * scaling + mask,  lse = logsumexp_j(scores),  out = softmax(scores) @ V

and then calls the shift with (q, K, V, out, lse); MimIC adds mu * v, the oracle adds the exact demo term,
the recorder stores K and V. logZ2 = lse therefore covers exactly the keys the query attends to: the same
causal, padding and sliding-window mask as the attention itself, in training and in cached decoding alike
(the reference code's unmasked training-time logZ2 is the defect docs/methods.md §6 names). Modules without a
shift that share the same config (Idefics v1's gated cross-attention layers) are passed to transformers'
own `sdpa_attention_forward` unchanged.

Which kernel (`attention_path`, decided per call; the same for every family, since all of them hand this
function q, K, V and a boolean (b, 1, q, kv) mask built by `_materialised_mask`):
  CPU_FLASH       CPU tensors, no gradient needed through q/K/V (inference, generation, the oracle, frozen
                  layers before the first shifted one in training), no dropout, float32/16/bfloat16:
                  `aten._scaled_dot_product_flash_attention_for_cpu`, which returns (out, lse (b, h, q) float32).
                  The boolean mask becomes an additive -inf mask in q's dtype, once per forward (cached on the
                  mask tensor and its version, shared by all layers); rows with no key (left-padding queries)
                  come back as out 0 / lse 0 and are set to out 0 / lse log(tiny), as the explicit path gives.
  CUDA_EFFICIENT  CUDA tensors, same conditions: `aten._scaled_dot_product_efficient_attention` with
                  compute_log_sumexp (bias padded for alignment, lse sliced from its 32-query padding); not
                  run by the CPU test suite, and any refusal of the kernel falls back to EXPLICIT.
  EXPLICIT        everything else, in particular training (the fused kernels' lse has no autograd formula;
                  here the gradient through logZ2 is exact), dropout, float64, and `FUSED_ENABLED = False`:
                  materialised scores (eager attention, O(seq^2) memory per head), the reference the fused
                  paths are tested against (tests/vectors/test_fused_attention.py, <= 1e-5).
GQA: a single query token (cached decoding) is packed as transformers' sdpa does (`pack_gqa`: the query
heads sharing a key/value head become queries of that head, no copy of K and V); longer queries get K and
V repeated (`repeat_kv`). `AttentionCall.key/value` are repeated lazily, only for shifts that read them.

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

Departures from the paper: training (gradients through q/K/V) uses the explicit path, not a fused kernel:
torch's fused kernels do not differentiate their log-sum-exp. Inference and generation use the fused kernel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lmmops.models import ModelAdapter

ATTN_NAME = "lmmops_mimic"
_SHIFT_ATTR = "_lmmops_shift"


class AttentionCall:
    """What one attention call saw and produced, for a shift. Shapes: (batch, heads, q_len, head_dim).

    `key` and `value` are repeated for GQA to (batch, heads, kv_len, head_dim) on first access only (MimIC
    never reads them; the oracle and the recorder do).
    """

    __slots__ = ("_key", "_repeated", "_value", "lse", "n_rep", "output", "query", "scaling")

    def __init__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        output: torch.Tensor,
        lse: torch.Tensor,
        scaling: float,
        n_rep: int = 1,
    ) -> None:
        self.query = query
        self.output = output  # softmax(q.K^T * scaling + mask) @ V
        self.lse = lse  # (batch, heads, q_len), float32: log of the softmax normaliser (logZ2)
        self.scaling = scaling
        self.n_rep = n_rep  # query heads per key/value head
        self._key, self._value, self._repeated = key, value, n_rep == 1

    def _repeat(self) -> None:
        if not self._repeated:
            self._key, self._value = repeat_kv(self._key, self.n_rep), repeat_kv(self._value, self.n_rep)
            self._repeated = True

    @property
    def key(self) -> torch.Tensor:
        self._repeat()
        return self._key

    @property
    def value(self) -> torch.Tensor:
        self._repeat()
        return self._value


Shift = Callable[[AttentionCall], torch.Tensor]


# Which kernel computes (output, lse) for one call. "explicit" is the reference (materialised scores); the two
# fused ones are torch's own attention kernels that return their log-sum-exp alongside the output.
EXPLICIT, CPU_FLASH, CUDA_EFFICIENT = "explicit", "cpu_flash", "cuda_efficient"
FUSED_ENABLED = True  # False: every call takes the explicit path (tests compare the two)
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG_TINY = float(torch.log(torch.tensor(torch.finfo(torch.float32).tiny)))  # the lse of a row with no key


def attention_path(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    dropout: float = 0.0,
    training: bool = False,
) -> str:
    """The kernel `attention_with_lse` uses for this call: EXPLICIT, CPU_FLASH or CUDA_EFFICIENT.

    Fused only where its result equals the explicit path's: no gradient is needed through q, k, v (the fused
    kernels' lse output has no autograd formula, and MimIC's logZ2 must be differentiable in training), no
    dropout, a float32/float16/bfloat16 input, a boolean or floating mask. CPU: the flash kernel of
    `scaled_dot_product_attention` for CPU; CUDA: the memory-efficient kernel. Anything else: EXPLICIT.
    """
    if not FUSED_ENABLED or (dropout > 0.0 and training):
        return EXPLICIT
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return EXPLICIT
    if query.dtype not in _FUSED_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return EXPLICIT
    if attention_mask is not None and not (attention_mask.dtype == torch.bool or attention_mask.is_floating_point()):
        return EXPLICIT
    device = query.device.type
    if device == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return CPU_FLASH
    if device == "cuda" and hasattr(torch.ops.aten, "_scaled_dot_product_efficient_attention"):
        return CUDA_EFFICIENT
    return EXPLICIT


def _causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """Boolean causal mask with the queries aligned to the END of the keys (decoding with a cache)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return rows >= torch.arange(kv_len, device=device)[None, :]


# The mask transformers builds once per forward is the same tensor for every layer: its additive form and its
# fully-masked rows are computed once and reused (keyed on the tensor itself, held here, and its version
# counter, so an in-place edit is seen; inference-mode tensors have no version counter and are not cached).
# `attention_shifts` empties it when its block ends.
_mask_cache: tuple[torch.Tensor, int | None, torch.dtype, torch.Tensor, torch.Tensor | None] | None = None


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(additive mask in `dtype`, -inf where not attended; rows that attend to no key, or None if there are none)."""
    global _mask_cache
    version = None if mask.is_inference() else mask._version
    cached = _mask_cache
    if cached is not None and cached[0] is mask and cached[1] == version and cached[2] == dtype:
        return cached[3], cached[4]
    if mask.dtype == torch.bool:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        dead = ~mask.any(dim=-1)
    else:
        additive = mask.to(dtype)
        dead = torch.isneginf(mask).all(dim=-1)
    dead_rows = dead if bool(dead.any()) else None
    _mask_cache = None if version is None else (mask, version, dtype, additive, dead_rows)
    return additive, dead_rows


def _fused(
    path: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    is_causal: bool,
    n_rep: int = 1,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Output and lse from a fused kernel, or None where it cannot take this call (the caller goes explicit).

    GQA (`n_rep` > 1): a single query token is packed as transformers' sdpa does it (`pack_gqa`): the n_rep
    query heads of one key/value head become n_rep queries of that head (a view; the mask, shared by the
    heads, broadcasts), so K and V are not copied; longer queries get K and V repeated (`repeat_kv`).
    """
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[-2]
    packed = n_rep > 1 and q_len == 1 and (
        attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
    )
    if packed:
        query = query.reshape(batch, heads // n_rep, n_rep, head_dim)
    elif n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    causal_flag = False
    if attention_mask is None and is_causal and q_len > 1:
        if q_len == kv_len:
            causal_flag = True  # the kernels align is_causal to the top-left: the same as bottom-right here
        else:
            attention_mask = _causal_mask(q_len, kv_len, query.device)
    additive, dead = (None, None) if attention_mask is None else _additive_mask(attention_mask, query.dtype)
    if path == CPU_FLASH:
        output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal_flag, attn_mask=additive, scale=scaling
        )
    elif path == CUDA_EFFICIENT:
        # Not exercised by the CPU test suite. The memory-efficient kernel wants the bias in q's dtype, laid out
        # (b, h, q, kv) with its last dimension's storage aligned (scaled_dot_product_attention pads it to a
        # multiple of 8 elements; 16 here), and pads lse to a multiple of 32 queries. Any refusal (head size,
        # alignment, architecture) falls back to the explicit path.
        if additive is not None:
            pad = (-kv_len) % 16
            if pad:
                additive = torch.nn.functional.pad(additive, (0, pad))[..., :kv_len]
            additive = additive.expand(query.shape[0], query.shape[1], query.shape[2], kv_len)
        try:
            output, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, additive, True, 0.0, causal_flag, scale=scaling
            )[:2]
        except RuntimeError:
            return None
        lse = lse[..., : query.shape[-2]]
    else:
        return None
    if packed:
        output, lse = output.reshape(batch, heads, 1, head_dim), lse.reshape(batch, heads, 1)
    lse = lse.float()
    if dead is not None:  # rows with no key: output 0, lse log(tiny), as the explicit path gives them
        output = output.masked_fill(dead[..., None], 0.0)
        lse = lse.masked_fill(dead, _LOG_TINY)
    return output, lse


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
    path: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp from the same scores. Shapes (b, h, q, d) and (b, h_kv, kv, d).

    GQA: h_kv may divide h (query head i reads key/value head i // (h / h_kv), as `repeat_kv` lays them out).

    `attention_mask` is boolean (True = attend) or additive float, broadcastable to (b, h, q, kv); None with
    `is_causal` masks causally, aligned to the end of the keys (decoding with a cache). Rows that attend to no
    key get output 0 and lse log(tiny) (finite, so nothing downstream turns into NaN).
    `path` forces a kernel (EXPLICIT, CPU_FLASH, CUDA_EFFICIENT); None lets `attention_path` choose.
    Returns (output (b, h, q, d) in value's dtype, lse (b, h, q) in float32).
    """
    n_rep = query.shape[1] // key.shape[1]
    if query.shape[1] != n_rep * key.shape[1] or value.shape[1] != key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads for {key.shape[1]} key / {value.shape[1]} value heads")
    if path is None:
        path = attention_path(query, key, value, attention_mask, dropout=dropout, training=training)
    if path != EXPLICIT:
        fused = _fused(path, query, key, value, attention_mask, scaling, is_causal, n_rep)
        if fused is not None:
            return fused
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    return explicit_attention_with_lse(
        query, key, value, attention_mask, scaling=scaling, is_causal=is_causal, dropout=dropout, training=training
    )


def explicit_attention_with_lse(
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
    """The reference path of `attention_with_lse`: materialised scores, exact autograd through lse.

    Keys and values have as many heads as the query (repeated for GQA)."""
    scores = (torch.matmul(query, key.transpose(-1, -2)) * scaling).float()
    if attention_mask is None and is_causal and query.shape[-2] > 1:
        attention_mask = _causal_mask(query.shape[-2], key.shape[-2], query.device)
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
    n_rep = query.shape[1] // key.shape[1]
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    is_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    output, lse = attention_with_lse(
        query, key, value, attention_mask, scaling=scale, is_causal=is_causal, dropout=dropout,
        training=module.training,
    )
    output = shift(AttentionCall(query, key, value, output, lse, scale, n_rep))
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
    return _forward_uses_attention_interface(type(module).forward)


@functools.lru_cache(maxsize=256)
def _forward_uses_attention_interface(forward: Callable[..., Any]) -> bool:
    """Read once per forward function (tokenising its source cost ~2 ms per module on every attach)."""
    try:
        source = inspect.getsource(forward)
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
        global _mask_cache
        _mask_cache = None  # do not keep the last forward's masks alive after the block
        for module in modules:
            if hasattr(module, _SHIFT_ATTR):
                delattr(module, _SHIFT_ATTR)
        for config, name in previous:
            _set_implementation(config, name)


register()
