"""DeepSpeed ZeRO-2 plumbing of the LIVE / MimIC distillation loop (`lmmops.vectors.train.distill`).

What it does: when `DistillConfig.deepspeed` names a DeepSpeed JSON config (infra/deepspeed/zero2.json),
`distill` calls `DeepSpeedRun.start(...)` once and then, per step,
  micro_batches  this rank's micro-batches of the step's draws (rows round-robin over ranks);
  chunk_weights  each micro-batch's share of the WHOLE batch's loss tokens (summed over ranks), so that the
                 gradient is the one of the whole-batch loss, as in the plain loop (`train.chunk_weights`);
  backward       `engine.backward` (the accumulation boundary set explicitly on the last micro-batch);
  grad_norm      the global gradient norm before clipping (`deepspeed.utils.safe_get_full_grad`), for the
                 non-finite check BEFORE the optimiser step and for the log;
  step           `engine.step()`: ZeRO-2 clips with the config's `gradient_clipping` and runs OUR AdamW (the
                 param groups of `train.make_optimizer`, whose lr the loop sets each step as without DeepSpeed)
                 on its partition;
  optimizer_state_dict  the ZeRO-partitioned AdamW state gathered back into torch's per-parameter
                 `AdamW.state_dict()` layout: checkpoints keep lmmops' own format and a run resumes with or
                 without DeepSpeed (resuming hands the loaded per-parameter state to the partitions).
`DeepSpeedRun.finish(vectors)` returns a plain copy of the trained vectors (no flat DeepSpeed buffers, no
hooks) and `close()` destroys the engine.

Process setup (`init_distributed`): without an accelerator setting and without CUDA, `DS_ACCELERATOR=cpu` is
set before deepspeed is imported; a process started without a launcher gets RANK=0, LOCAL_RANK=0,
WORLD_SIZE=1, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT; the backend is gloo on CPU, nccl on GPU
(`torch.cuda.set_device(LOCAL_RANK)` first). Under `torchrun` or `deepspeed --no_local_rank` the launcher's
variables are used as they are; the caller must then have loaded the base model on `launch_device()`.
On CPU, the first `init_distributed` compiles DeepSpeed's `deepspeed_shm_comm` extension (~45 s, cached in
TORCH_EXTENSIONS_DIR; set it inside the repo, as the Makefile does).

Config (`load_config`): DeepSpeed does not resolve "auto"; here "auto" (or a missing key) in
train_micro_batch_size_per_gpu, gradient_accumulation_steps and train_batch_size is filled from the
DistillConfig (rows per rank = ceil(batch_size / world), micro-batch = micro_batch_size or those rows), and
gradient_clipping from max_grad_norm; an explicit value that disagrees with the DistillConfig is an error
(DistillConfig says what is trained, the JSON only how). Refused: ZeRO stages other than 2 (stage 3
partitions the vectors, which the hooks read outside `engine.forward`), fp16/bf16 (the vectors train in
fp32, as without DeepSpeed), an "optimizer" or "scheduler" section (the loop brings its own), any other
"auto". Optimizer offload (zero2_offload.json) keeps the torch AdamW ("zero_force_ds_cpu_optimizer": false).

Multi-rank: every rank runs the same number of micro-batches per step (ZeRO-2 reduces gradients in every
backward, a collective); a rank with fewer rows re-runs the step's first row with weight 0. Only rank 0
writes checkpoints and calls `on_log` (train.distill). A non-finite loss raises on the rank that sees it
and the launcher stops the others; a non-finite gradient norm is global and raises on every rank.

Run: `python -m pytest tests/vectors/test_deepspeed.py -q` (first run builds the extension).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmmops.vectors.base import VectorSet
from lmmops.vectors.data import Draw

_AUTO_FILLED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping")


class DeepSpeedConfigError(ValueError):
    """The DeepSpeed JSON config cannot run this distillation as configured."""


# ----------------------------------------------------------------------------------------------------
# process setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_device() -> torch.device:
    """The device this process should load the base model on: cuda:LOCAL_RANK on a GPU host, else cpu."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed unless already done; returns (rank, world_size)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"  # before deepspeed is imported (it picks its accelerator once)
    if "RANK" not in os.environ:  # no launcher: a single process
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        for name, value in defaults.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines dump the whole config
    on_gpu = get_accelerator().device_name() == "cuda"
    if not torch.distributed.is_initialized():
        if on_gpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        threads = torch.get_num_threads()
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
        torch.set_num_threads(threads)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def load_config(
    path: str | Path, *, batch_size: int, micro_batch_size: int | None, world_size: int, max_grad_norm: float
) -> dict[str, Any]:
    """The JSON config at `path` with its "auto" batch and clipping fields filled from the DistillConfig."""
    path = Path(path)
    if not path.is_file():
        raise DeepSpeedConfigError(f"DeepSpeed config {path} does not exist (DistillConfig.deepspeed)")
    config = json.loads(path.read_text())
    rows = math.ceil(batch_size / world_size)  # the most rows a rank gets in a step
    micro = min(micro_batch_size or rows, rows)
    accumulation = math.ceil(rows / micro)
    wanted = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
              "train_batch_size": micro * accumulation * world_size, "gradient_clipping": max_grad_norm}
    for name, value in wanted.items():
        given = config.get(name, "auto")
        if given != "auto" and float(given) != float(value):
            raise DeepSpeedConfigError(
                f"{path}: {name} is {given}, but the DistillConfig (batch_size {batch_size}, micro_batch_size "
                f"{micro_batch_size}, max_grad_norm {max_grad_norm}, {world_size} rank(s)) needs {value}; "
                f'set it to "auto"')
        config[name] = value
    zero = config.get("zero_optimization", {})
    if zero.get("stage") != 2:
        raise DeepSpeedConfigError(f"{path}: zero_optimization.stage is {zero.get('stage')!r}; the vector "
                                   f"loop runs ZeRO stage 2 (stage 3 would partition the vectors the hooks read)")
    for precision in ("fp16", "bf16"):
        enabled = config.get(precision, {}).get("enabled", False)
        if enabled == "auto":
            config[precision]["enabled"] = enabled = False
        if enabled:
            raise DeepSpeedConfigError(f"{path}: {precision} is enabled; the vectors train in fp32 (the base "
                                       f"model runs in its own dtype): set {precision}.enabled to false")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise DeepSpeedConfigError(f"{path}: remove the {section!r} section; the loop passes its own AdamW "
                                       f"groups and sets the warm-up + cosine learning rate itself")
    left = _auto_paths(config)
    if left:
        raise DeepSpeedConfigError(f'{path}: DeepSpeed does not resolve "auto" and lmmops fills only '
                                   f"{', '.join(_AUTO_FILLED)}; set {', '.join(left)}")
    return config


def _auto_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if value == "auto" else []


# ----------------------------------------------------------------------------------------------------
# the engine and one training step


@dataclass
class DeepSpeedRun:
    """A DeepSpeed engine around one vector set, and what `distill` calls on it (see the module docstring)."""

    engine: Any  # deepspeed.DeepSpeedEngine
    rank: int
    world_size: int
    device: torch.device
    groups: list[list[nn.Parameter]]  # the vector parameters of each AdamW group, in order

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(
        cls, config_path: str | Path, vectors: VectorSet, optimizer: torch.optim.Optimizer, *, batch_size: int,
        micro_batch_size: int | None, max_grad_norm: float,
    ) -> DeepSpeedRun:
        """Wrap `vectors` and `optimizer` (torch AdamW, possibly loaded from a checkpoint) in a ZeRO-2 engine."""
        rank, world_size = init_distributed()
        import deepspeed

        config = load_config(config_path, batch_size=batch_size, micro_batch_size=micro_batch_size,
                             world_size=world_size, max_grad_norm=max_grad_norm)
        device = next(vectors.parameters()).device
        groups = [list(g["params"]) for g in optimizer.param_groups]
        loaded = [[dict(optimizer.state.get(p, {})) for p in params] for params in groups]
        threads = torch.get_num_threads()
        engine, *_ = deepspeed.initialize(model=vectors, optimizer=optimizer, config=config)
        torch.set_num_threads(threads)
        engine_device = next(vectors.parameters()).device
        if engine_device != device:
            raise RuntimeError(f"the base model is on {device} but DeepSpeed rank {rank} put the vectors on "
                               f"{engine_device}: load the model on lmmops.vectors.distributed.launch_device()")
        run = cls(engine=engine, rank=rank, world_size=world_size, device=device, groups=groups)
        if any(state for params in loaded for state in params):
            run._load_optimizer_state(loaded)
        return run

    def micro_batches(self, draws: Sequence[Draw], micro_batch_size: int | None) -> tuple[list[list[Draw]],
                                                                                          list[bool]]:
        """This rank's micro-batches of a step's draws and whether each counts (False: a weight-0 stand-in).

        With one rank: the plain loop's chunks. With more: rows go round-robin to ranks, and every rank runs
        ceil(ceil(rows / ranks) / micro) micro-batches, the same number everywhere.
        """
        share = list(draws[self.rank :: self.world_size])
        most = math.ceil(len(draws) / self.world_size)
        size = micro_batch_size or most
        batches = [share[i : i + size] for i in range(0, size * math.ceil(most / size), size)]
        counted = [bool(b) for b in batches]
        return [b or [draws[0]] for b in batches], counted

    def chunk_weights(self, counts: Sequence[tuple[int, int]], counted: Sequence[bool]) -> list[tuple[float, float]]:
        """(distill, lm) weights of this rank's micro-batches: their share of all ranks' loss tokens.

        `counts` are (distilled, answer) token counts per micro-batch (`train.loss_token_counts`); with one
        rank the weights are `train.chunk_weights`' exactly.
        """
        local = [(d, n) if c else (0, 0) for (d, n), c in zip(counts, counted, strict=True)]
        totals = torch.tensor([sum(d for d, _ in local), sum(n for _, n in local)], dtype=torch.float64,
                              device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(totals)
        distilled, answers = int(totals[0].item()), int(totals[1].item())
        return [(d / distilled, n / answers) for d, n in local]

    def backward(self, loss: torch.Tensor, *, last: bool) -> None:
        """Accumulate the gradient of `loss` (already weighted); `last` marks the step's last micro-batch.

        DeepSpeed averages gradients over ranks and would divide by the accumulation steps: neither here, the
        weights already make the sum over micro-batches and ranks the whole-batch loss.
        """
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world_size if self.world_size > 1 else loss, scale_wrt_gas=False)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over ranks (the logged loss parts of the whole batch)."""
        if self.world_size == 1:
            return values
        out = values.to(self.device, torch.float64)
        torch.distributed.all_reduce(out)
        return out.to(values.device, values.dtype)

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the vectors' gradient before clipping (call after the last backward)."""
        from deepspeed.utils import safe_get_full_grad

        norms = [torch.linalg.vector_norm(safe_get_full_grad(p)) for params in self.groups for p in params]
        return torch.linalg.vector_norm(torch.stack(norms))

    def step(self) -> None:
        """Clip (config gradient_clipping) and apply the optimiser step."""
        self.engine.step()

    # ------------------------------------------------------------------------------------------------
    # optimiser state in torch's per-parameter layout (lmmops checkpoints)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """What `torch.optim.AdamW.state_dict()` of the plain loop would hold (a collective: every rank calls)."""
        inner = self.engine.optimizer.optimizer
        state: dict[int, dict[str, Any]] = {}
        packed: list[dict[str, Any]] = []
        index = 0
        for group, params in zip(inner.param_groups, self.groups, strict=True):
            flat = group["params"][0]
            flat_state = inner.state.get(flat, {})
            ids = []
            for p in params:
                if flat_state:
                    state[index] = {key: self._gather(p, value) if _is_flat(value, flat) else value.clone()
                                    for key, value in flat_state.items()}
                ids.append(index)
                index += 1
            packed.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": packed}

    def _gather(self, param: nn.Parameter, flat_value: torch.Tensor) -> torch.Tensor:
        """The full, parameter-shaped tensor of a flat-partition optimizer state entry (summed over ranks)."""
        full = torch.zeros(param.numel(), dtype=flat_value.dtype, device=flat_value.device)
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is not None:
            lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
            full.narrow(0, lp.start, lp.numel).copy_(flat_value.narrow(0, hp.start, hp.numel))
        if self.world_size > 1:
            torch.distributed.all_reduce(full)
        return full.view_as(param).to(param.device)

    def _load_optimizer_state(self, loaded: list[list[dict[str, Any]]]) -> None:
        """Hand per-parameter AdamW state (as `load_state_dict` left it) to the flat partitions."""
        inner = self.engine.optimizer.optimizer
        for group, params, states in zip(inner.param_groups, self.groups, loaded, strict=True):
            if not any(states):
                continue
            flat = group["params"][0]
            new: dict[str, Any] = {}
            for key, first in states[0].items():
                if not (torch.is_tensor(first) and first.dim() > 0):  # "step": one value for the group
                    new[key] = first.clone() if torch.is_tensor(first) else first
                    continue
                buffer = torch.zeros_like(flat)
                for p, st in zip(params, states, strict=True):
                    mapping = getattr(p, "_hp_mapping", None)
                    if mapping is not None:
                        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                        value = st[key].to(buffer.device, buffer.dtype).reshape(-1)
                        buffer.narrow(0, hp.start, hp.numel).copy_(value.narrow(0, lp.start, lp.numel))
                new[key] = buffer
            inner.state[flat] = new

    # ------------------------------------------------------------------------------------------------
    # the end

    def finish(self, vectors: VectorSet) -> VectorSet:
        """A plain copy of the trained vectors: own storage, no DeepSpeed hooks or attributes."""
        with torch.random.fork_rng(devices=[]):
            clean = type(vectors)(**vectors.shape())
        clean.load_state_dict({k: v.detach().clone() for k, v in vectors.state_dict().items()})
        return clean.to(self.device)

    def close(self) -> None:
        """Release the engine's buffers and hooks (the process group stays up for the next run)."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None


def _is_flat(value: Any, flat: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.shape == flat.shape and value.dim() > 0
