"""Task vectors (Hendel et al. 2023, "In-Context Learning Creates Task Vectors"), through the family adapter.

Fit (`fit_task_vector`): `prompts` k-shot prompts from the task's train pool (instruction + `shots` demos + a
pool query, no answer; `common.kshot_prompts`) run through the frozen model once; at every decoder layer l the
output hidden state (the residual stream after layer l; HF `hidden_states[l + 1]`) of each prompt's last token
is averaged over the prompts, giving one candidate vector theta_l in R^d per layer. The layer L is chosen on the
validation split: for each candidate layer (`task_vector.layers`, default all), the validation queries are
answered zero-shot with theta_l patched in, and the best accuracy wins (ties: the lower layer). The test split
is never read here.

Inference (`attach_task_vector`): a forward hook on decoder layer L REPLACES the hidden state of the last
prompt token by theta_L, in the prefill forward only (cached decoding steps, sequence length 1, are left
alone), exactly as Hendel et al. patch the zero-shot run of x; the layers after L then read theta_L at that
position (and the later tokens attend to it through the KV cache). One whole-tensor operation per forward.

Size (`trainable_params`): d, the one vector added (nothing is trained; theta is an average).

Run: `fit_baseline("task_vector", cfg, model, processor, train, val)` in `lmmops.vectors.baselines`;
`python -m pytest tests/vectors/test_baselines.py -q`.

Departures from the paper: the dummy query x' of the k-shot prompt is another pool item (with its image);
theta is averaged over `prompts` prompts with different demos and queries (the paper averages over 50
dummy queries for its layer sweep); L is chosen on our validation split rather than from the paper's per-model
sweep on held-out tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmmops.config import VectorBaselinesConfig
from lmmops.models import ModelAdapter
from lmmops.vectors.baselines.common import hooked, kshot_prompts, last_token_outputs, on_last_token
from lmmops.vectors.data import DemoPool


def task_vector_candidates(model: nn.Module, adapter: ModelAdapter, pool: DemoPool,
                           cfg: VectorBaselinesConfig) -> torch.Tensor:
    """(layers, hidden): the mean last-token hidden state of k-shot prompts at every decoder layer."""
    specs = kshot_prompts(pool, shots=cfg.shots, count=cfg.task_vector.prompts, seed=cfg.seed)
    states = last_token_outputs(model, adapter, specs, instruction=cfg.instruction, batch_size=cfg.batch_size)
    return states.mean(dim=1)


@contextmanager
def attach_task_vector(adapter: ModelAdapter, vector: torch.Tensor, layer: int) -> Iterator[None]:
    """Replace the last prompt token's output of decoder layer `layer` by `vector` (prefill forward only)."""
    if vector.shape != (adapter.hidden_size,):
        raise ValueError(f"task vector of shape {tuple(vector.shape)} for hidden size {adapter.hidden_size}")

    def patch(last: torch.Tensor) -> Any:
        return vector.to(last.device, last.dtype).expand_as(last)

    with hooked([adapter.decoder_layers[layer]], [on_last_token(patch, prefill_only=True)]):
        yield
