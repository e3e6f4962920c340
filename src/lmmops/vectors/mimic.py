"""MimIC (Mimic In-Context Learning, CVPR 2025): parameters, the head-level shift, the loss.

Parameters (`MimicVectors`), per layer l and head h: v_{l,h} in R^{d_h} (init randn * 1e-3), w_{l,h} in
R^{d_h} (init N(0, 0.02)), b_{l,h} (init 0) — L*(2*H*d_h + H) scalars, 263,168 for Idefics-9b and
Idefics2-8b-base (docs/methods.md §6). H counts query heads (GQA shares keys, not outputs).

Intervention (`attach_mimic(model, vectors)`): inside every decoder layer's self-attention, per head, on
the attention output before o_proj, for query position i:

    o_i = SA(q_i, K, V) + mu_i * v_{l,h},   mu_i = sigmoid(w_{l,h} . q_i + b_{l,h} - logZ2_i),
    logZ2_i = logsumexp_j (q_i . k_j / sqrt(d_h))   over exactly the keys query i attends to,

with q, k as the attention function receives them (after RoPE / M-RoPE and q/k norms, k after repeat_kv).
It runs through the "lmmops_mimic" attention function (`lmmops.vectors.attention`, which lists the kernel
per device and the families): SA and logZ2 come from the same pass (a fused kernel returning its log-sum-exp
in inference and generation, materialised scores when training needs the gradient through logZ2), so the
causal, padding and sliding-window masks are the attention's own, in training and in cached decoding. The
scale used is the model's own `scaling` (1/sqrt(d_h) in every covered family). The base model is frozen while attached.

Positions: logZ2 = logsumexp(q.k) depends only on relative positions, but logZ1 = w.q + b reads q after
RoPE, i.e. its absolute position. A left-padded row therefore gets the same shift as the same prompt alone
only if its position ids count from its first real token, as `generate()` numbers them (and as Idefics v1
and Qwen's M-RoPE do in a plain forward); llama-style forwards without `position_ids` count from the first
pad. Training loops must give padded batches the same position ids that decoding will use.

Loss (`mimic_loss`, pure): mean over layers and tokens of ||h - h'||^2 (squared L2 over the hidden size)
between the teacher's and the student's recorded hidden states of the query and answer tokens, plus
lm_weight (0.5) times the student's answer LM loss. `aligned_hidden` picks those tokens out of per-layer
(batch, seq, d) outputs with a token mask (query span without BOS and pads), in the same order for both runs.

Run: `python -m pytest tests/vectors -q`; the training stage (issue 6, part 2) calls these.

Departures from the reference: logZ2 is masked like the attention (the reference takes it over all keys,
unmasked, in training, and causally when decoding); training computes the scores eager-style (see
attention.py), inference uses the fused kernel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lmmops.models import ModelAdapter, adapter_for
from lmmops.vectors.attention import AttentionCall, attention_shifts
from lmmops.vectors.base import LossParts, VectorSet, frozen


class MimicVectors(VectorSet):
    """MimIC's v, w (num_layers, num_heads, head_dim) and b (num_layers, num_heads)."""

    method = "mimic"

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__(num_layers, hidden_size, num_heads, head_dim)
        self.shift = nn.Parameter(torch.randn(num_layers, num_heads, head_dim) * 1e-3)
        self.weight = nn.Parameter(torch.randn(num_layers, num_heads, head_dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(num_layers, num_heads))

    @staticmethod
    def count(num_layers: int, num_heads: int, head_dim: int) -> int:
        """L*(2*H*d_h + H): the trainable-parameter count of MimIC for a model of this shape."""
        return num_layers * (2 * num_heads * head_dim + num_heads)


class MimicShift:
    """The shift of one layer: out + sigmoid(w.q + b - logZ2) * v, for every head at once."""

    def __init__(self, vectors: MimicVectors, layer: int):
        self.vectors = vectors
        self.layer = layer
        # (parameters, their data pointers, (w, b, v) views): see `_parameters`
        self._views: tuple[tuple[nn.Parameter, ...], tuple[int, ...], tuple[torch.Tensor, ...]] | None = None

    def _parameters(self) -> tuple[torch.Tensor, ...]:
        """This layer's w (H, 1, d_h), b (H, 1, 1), v (H, 1, d_h) in float32.

        Without autograd and for float32 parameters these are views of the parameters (so in-place updates
        show through), made once instead of on every decoding step and kept while the parameters are the same
        objects on the same storage (`.to()`, `.data =` rebuild them); otherwise they are rebuilt per call.
        """
        vec, layer = self.vectors, self.layer
        params = (vec.weight, vec.bias, vec.shift)
        cacheable = not torch.is_grad_enabled() and all(p.dtype == torch.float32 for p in params)
        ptrs = tuple(p.data_ptr() for p in params) if cacheable else ()
        cached = self._views
        if cacheable and cached is not None and cached[1] == ptrs and all(
            a is b for a, b in zip(cached[0], params, strict=True)
        ):
            return cached[2]
        w = vec.weight[layer].float()[:, None, :]
        b = vec.bias[layer].float()[:, None, None]
        v = vec.shift[layer].float()[:, None, :]
        self._views = (params, ptrs, (w, b, v)) if cacheable else None
        return w, b, v

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        # on the decoding hot path (every layer, every step): few ops, no einsum parsing, no copies in float32
        w, b, v = self._parameters()
        log_z1 = (call.query.float() * w).sum(-1, keepdim=True)  # (B, H, q, 1): w . q_i per head
        mu = torch.sigmoid(log_z1 + (b - call.lse[..., None]))
        output = call.output
        if output.dtype == torch.float32:
            return torch.addcmul(output, mu, v)
        return output + (mu * v).to(output.dtype)


@contextmanager
def attach_mimic(
    model: nn.Module, vectors: MimicVectors, adapter: ModelAdapter | None = None
) -> Iterator[MimicVectors]:
    """Apply MimIC to `model` (frozen) inside the block; the model is unchanged after it."""
    adapter = adapter or adapter_for(model)
    vectors.check_fits(adapter)
    shifts = [MimicShift(vectors, layer) for layer in range(adapter.num_layers)]
    with frozen(adapter.model), attention_shifts(adapter, shifts):
        yield vectors


def aligned_hidden(hidden: Sequence[torch.Tensor], token_mask: torch.Tensor) -> torch.Tensor:
    """Stack per-layer (B, T, d) outputs at the masked tokens into (L, N, d) (row-major token order)."""
    mask = token_mask.bool()
    return torch.stack([h[mask] for h in hidden])


def mimic_loss(
    teacher_hidden: torch.Tensor | Sequence[torch.Tensor],
    student_hidden: torch.Tensor | Sequence[torch.Tensor],
    lm_loss: torch.Tensor,
    *,
    lm_weight: float = 0.5,
) -> LossParts:
    """mean over layers and tokens of ||h_teacher - h_student||^2 + lm_weight * lm_loss. Inputs (L, N, d)."""
    teacher = teacher_hidden if isinstance(teacher_hidden, torch.Tensor) else torch.stack(list(teacher_hidden))
    student = student_hidden if isinstance(student_hidden, torch.Tensor) else torch.stack(list(student_hidden))
    if teacher.shape != student.shape or teacher.dim() != 3 or teacher.shape[1] == 0:
        raise ValueError(f"teacher hidden {tuple(teacher.shape)} vs student {tuple(student.shape)}: expected equal "
                         f"(layers, tokens > 0, hidden)")
    align = (teacher.detach().float() - student.float()).pow(2).sum(-1).mean()
    return LossParts(total=align + lm_weight * lm_loss, distill=align, lm=lm_loss)
