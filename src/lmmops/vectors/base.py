"""What LIVE and MimIC share: the vector-set base class, shape checks, freezing, capturing module outputs.

A `VectorSet` is a small `nn.Module` holding the trainable parameters of one in-context-vector method for
one base-model architecture (its layer count, hidden size, heads and head size, read from the model's
adapter). It knows its own trainable-parameter count and checks that it fits a model before it is
attached or loaded (`VectorMismatchError` names both sides). `frozen(model)` turns off gradients of every
base-model parameter for the duration of a block and restores the flags afterwards; `capture_outputs`
records the outputs of a list of modules (e.g. the MLP of every decoder layer) during one forward.

Run: used by `lmmops.vectors.live` and `lmmops.vectors.mimic`; `python -m pytest tests/vectors -q`.

Departures from the references: none in the maths; the references keep the vectors inside a model
subclass per family, here they are a separate module attached through the family adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from lmmops.models import ModelAdapter


class LossParts(NamedTuple):
    """A training loss and its two terms (LIVE: KL distillation; MimIC: hidden-state alignment)."""

    total: torch.Tensor
    distill: torch.Tensor
    lm: torch.Tensor


class VectorMismatchError(ValueError):
    """A vector set (or vector file) does not fit the base model it is attached to or loaded onto."""


def model_signature(adapter: ModelAdapter) -> dict[str, Any]:
    """The architecture facts a vector set depends on, read from the model through its adapter."""
    return {
        "family": adapter.family,
        "model_class": type(adapter.model).__name__,
        "num_layers": adapter.num_layers,
        "hidden_size": adapter.hidden_size,
        "num_heads": adapter.num_heads,
        "num_kv_heads": adapter.num_kv_heads,
        "head_dim": adapter.head_dim,
    }


def mismatch_message(what: str, expected: dict[str, Any], actual: dict[str, Any], keys: Sequence[str]) -> str | None:
    """None when `expected` and `actual` agree on `keys`, else a message naming both sides."""
    diffs = [f"{k}: {expected.get(k)!r} vs {actual.get(k)!r}" for k in keys if expected.get(k) != actual.get(k)]
    if not diffs:
        return None
    left = ", ".join(f"{k}={expected.get(k)!r}" for k in keys)
    right = ", ".join(f"{k}={actual.get(k)!r}" for k in keys)
    return f"{what} [{left}] does not fit this model [{right}]; mismatched (vectors vs model): " + "; ".join(diffs)


V = TypeVar("V", bound="VectorSet")


class VectorSet(nn.Module):
    """Trainable parameters of one method for one architecture. Subclasses define `method` and the tensors."""

    method: ClassVar[str]
    # Signature keys whose values must match between the vectors and the model they are attached to.
    fit_keys: ClassVar[tuple[str, ...]] = ("num_layers", "hidden_size", "num_heads", "head_dim")

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_layers = int(num_layers)
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)

    @classmethod
    def for_adapter(cls: type[V], adapter: ModelAdapter, *, seed: int = 0) -> V:
        """A freshly initialised vector set shaped for `adapter`'s model (initialisation depends on `seed` only)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(adapter.num_layers, adapter.hidden_size, adapter.num_heads, adapter.head_dim)

    def shape(self) -> dict[str, int]:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
        }

    def num_parameters(self) -> int:
        """Number of trainable scalars (what the paper's parameter counts report)."""
        return sum(p.numel() for p in self.parameters())

    def check_fits(self, adapter: ModelAdapter) -> None:
        """Raise VectorMismatchError (naming both sides) unless these vectors fit `adapter`'s model."""
        message = mismatch_message(f"{self.method} vectors", self.shape(), model_signature(adapter), self.fit_keys)
        if message:
            raise VectorMismatchError(message)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off `requires_grad` on every parameter of `model` inside the block; restore the flags after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Record each module's output tensor (first element of a tuple output) of the last forward in the block.

    The yielded list has one slot per module, overwritten at each forward (gradients flow through it).
    """
    slots: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(i: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            slots[i] = _first_tensor(output)

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield slots
    finally:
        for h in handles:
            h.remove()
