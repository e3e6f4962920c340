"""LIVE (learnable in-context vectors, arXiv 2406.13185): parameters, the intervention, the loss.

Parameters (`LiveVectors`): V in R^{L x d}, initialised N(0, 0.01^2), and alpha in R^L, initialised 0.1
(docs/methods.md §5) — L*d + L scalars, 131,104 for Idefics-9b. Not per head.

Intervention (`attach_live(model, vectors)`): at every decoder layer l, at the family's site
(`adapter.live_site`: the whole decoder-layer output for Idefics v1, the MLP output before the residual add
for the other families), on every token and every generation step:

    s = h + alpha_l * v_l,   h' = s * ||h|| / ||s||      (norms per token over the hidden dimension)

It is installed as one forward hook per layer whose body is a handful of whole-tensor operations on the
(batch, seq, d) output — no per-token Python work; with a KV cache each generation step runs the same hook
on the new token. Hooks were chosen over rewriting the decoder layers because both sites are module outputs
in every family and a hook leaves the frozen model's code untouched. While attached, the base model's
parameters are frozen (requires_grad False) and their flags are restored on exit. With alpha = 0 or v = 0
the hook returns h bit for bit (s = h, and ||h|| / ||h|| is exactly 1).

Loss (`live_loss`, pure): KL(P_teacher || P_student) at temperature 1 over the answer tokens only, plus
lm_weight (0.5) times the student's LM loss on the answer tokens only. Teacher logits come from the frozen
model without the intervention on k demos + query + answer, the student's from the intervened model on the
query + answer; the i-th answer token of a row is predicted by the logits one position before it in each.

Run: `python -m pytest tests/vectors -q`; the training stage (issue 6, part 2) calls these.

Departures from the reference: the LM loss covers the answer tokens only and teacher and student prompts
carry the same instruction (both reference defects named in docs/methods.md §5). Temperature is fixed at 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmmops.models import ModelAdapter, adapter_for
from lmmops.vectors.base import LossParts, VectorSet, frozen

LIVE_SITES = ("layer_output", "mlp_output")


class LiveVectors(VectorSet):
    """LIVE's V (num_layers, hidden_size) and alpha (num_layers)."""

    method = "live"
    fit_keys = ("num_layers", "hidden_size")

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__(num_layers, hidden_size, num_heads, head_dim)
        self.vectors = nn.Parameter(torch.randn(num_layers, hidden_size) * 0.01)
        self.alpha = nn.Parameter(torch.full((num_layers,), 0.1))

    @staticmethod
    def count(num_layers: int, hidden_size: int) -> int:
        """L*d + L: the trainable-parameter count of LIVE for a model of this shape."""
        return num_layers * hidden_size + num_layers


def live_shift(hidden: torch.Tensor, vector: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """h' = s * ||h|| / ||s|| with s = h + alpha * v, per token (last dimension). Pure, vectorised."""
    shifted = hidden + alpha.to(hidden.dtype) * vector.to(hidden.dtype)
    norm_h = hidden.norm(dim=-1, keepdim=True)
    norm_s = shifted.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(hidden.dtype).tiny)
    return shifted * (norm_h / norm_s)


def live_site_modules(adapter: ModelAdapter) -> list[nn.Module]:
    """The module whose output LIVE shifts, one per decoder layer, for the adapter's family."""
    if adapter.live_site == "layer_output":
        return list(adapter.decoder_layers)
    if adapter.live_site == "mlp_output":
        return list(adapter.mlp_modules)
    raise ValueError(f"{adapter.family}: unknown LIVE site {adapter.live_site!r}; expected one of {LIVE_SITES}")


def _hook(vectors: LiveVectors, layer: int) -> Any:
    # Without autograd (inference, evaluation) the layer's shift alpha_l * v_l is computed once per parameter
    # version, dtype and device instead of at every call: live_shift's indexing, casts and the finfo lookup cost
    # ~2x the shift itself on a 128-wide model, i.e. most of the injection's latency at decoding steps. The
    # result is bit-identical to live_shift (the same operations in the same order on the same values). The
    # cache lives as long as one attachment; it holds the parameter objects it was computed from (so that their
    # ids cannot be reused) and their in-place version counters (an optimiser step or load_state_dict bumps them).
    cached: list[Any] = [None]

    def shifted(hidden: torch.Tensor) -> torch.Tensor:
        v, a = vectors.vectors, vectors.alpha
        if torch.is_grad_enabled():
            return live_shift(hidden, v[layer], a[layer])
        key = (v._version, a._version, hidden.dtype, hidden.device)
        entry = cached[0]
        if entry is None or entry[0] is not v or entry[1] is not a or entry[2] != key:
            delta = (a[layer].to(hidden.dtype) * v[layer].to(hidden.dtype)).to(hidden.device)
            entry = cached[0] = (v, a, key, delta, torch.finfo(hidden.dtype).tiny)
        delta, tiny = entry[3], entry[4]
        s = hidden + delta
        return s * (hidden.norm(dim=-1, keepdim=True) / s.norm(dim=-1, keepdim=True).clamp_min(tiny))

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (shifted(output[0]), *output[1:])
        return shifted(output)

    return hook


@contextmanager
def attach_live(model: nn.Module, vectors: LiveVectors, adapter: ModelAdapter | None = None) -> Iterator[LiveVectors]:
    """Apply LIVE to `model` (frozen) inside the block; the model is unchanged after it."""
    adapter = adapter or adapter_for(model)
    vectors.check_fits(adapter)
    handles = [m.register_forward_hook(_hook(vectors, i)) for i, m in enumerate(live_site_modules(adapter))]
    try:
        with frozen(adapter.model):
            yield vectors
    finally:
        for handle in handles:
            handle.remove()


def _predicting_positions(answer_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict the answer tokens (one to the left of each answer token)."""
    if bool(answer_mask[:, 0].any()):
        raise ValueError("an answer token at position 0 has no logits predicting it")
    pred = torch.zeros_like(answer_mask, dtype=torch.bool)
    pred[:, :-1] = answer_mask[:, 1:].bool()
    return pred


def live_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_answer_mask: torch.Tensor,
    student_answer_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_weight: float = 0.5,
) -> LossParts:
    """KL(P_teacher || P_student) over answer tokens (T=1, mean per token) + lm_weight * answer LM loss.

    teacher_logits (B, Tt, V), student_logits (B, Ts, V); the masks (B, Tt) / (B, Ts) mark the answer tokens
    of each sequence (every row must have as many answer tokens in both); labels (B, Ts) are the student's
    token ids (values outside the answer mask are ignored, so HF's -100 convention works too).
    """
    if teacher_logits.shape[0] != student_logits.shape[0] or teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} vs student {tuple(student_logits.shape)}")
    t_counts, s_counts = teacher_answer_mask.sum(-1), student_answer_mask.sum(-1)
    if not torch.equal(t_counts, s_counts) or int(s_counts.sum()) == 0:
        raise ValueError(f"answer tokens per row differ or are empty: teacher {t_counts.tolist()}, "
                         f"student {s_counts.tolist()}")
    teacher = teacher_logits[_predicting_positions(teacher_answer_mask)].detach().float()
    student = student_logits[_predicting_positions(student_answer_mask)].float()
    log_p = torch.log_softmax(teacher, dim=-1)
    log_q = torch.log_softmax(student, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    lm = nn.functional.cross_entropy(student, labels[student_answer_mask.bool()].long())
    return LossParts(total=kl + lm_weight * lm, distill=kl, lm=lm)
