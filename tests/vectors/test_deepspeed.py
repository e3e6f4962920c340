"""The DeepSpeed ZeRO-2 path of the LIVE / MimIC loop (`DistillConfig.deepspeed`, `lmmops.vectors.distributed`).

On CPU in one process (DS_ACCELERATOR=cpu, gloo): LIVE and MimIC train with infra/deepspeed/zero2.json and give
the plain loop's vectors (bit for bit while clipping is inactive; ~1e-9 when it clips, DeepSpeed computes the clip
factor as 1/((norm + 1e-6)/max) where torch takes max/(norm + 1e-6)); base weights stay bit-identical;
checkpoints keep lmmops' format, so runs resume across the two paths; the non-finite checks stop before the step.
A slow test runs two ranks under torchrun (rows split over ranks, a weight-0 stand-in row where a rank has none)
and compares with the plain loop: identical here, but the tolerance allows for the other order of the gradient
sums (per rank, then over ranks) that more ranks or larger tensors would show.

The first DeepSpeed start on a machine compiles the `deepspeed_shm_comm` extension (~45 s, up to 2 min on a
busy 2-core box) into TORCH_EXTENSIONS_DIR (the repo's .cache/torch_extensions unless set); later starts load
it. This file is also the torchrun worker of the two-rank test (`python tests/vectors/test_deepspeed.py ...`).

Run: `python -m pytest tests/vectors/test_deepspeed.py -q` (`-m "not slow"` skips the two-rank test).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import lmmops.vectors.train as train_module  # noqa: E402
from lmmops.data.schemas import VQAAnswer, VQAItem  # noqa: E402
from lmmops.models import adapter_for  # noqa: E402
from lmmops.vectors import LossParts, live_loss  # noqa: E402
from lmmops.vectors.data import Draw  # noqa: E402
from lmmops.vectors.distributed import DeepSpeedConfigError, DeepSpeedRun, load_config  # noqa: E402
from lmmops.vectors.train import NonFiniteLossError, distill  # noqa: E402

from testutil import tiny_distill  # noqa: E402

ZERO2 = str(REPO / "infra" / "deepspeed" / "zero2.json")
OFFLOAD = str(REPO / "infra" / "deepspeed" / "zero2_offload.json")
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]


def make_pool(root: Path) -> list[VQAItem]:
    """8 items of one task on solid-colour images; two question wordings so that batches need padding."""
    out = []
    for i, colour in enumerate(COLOURS):
        path = root / f"{i}.png"
        if not path.exists():
            Image.new("RGB", (32, 32), colour).save(path)
        answers = tuple(VQAAnswer(colour, "yes", k) for k in range(10))
        question = "What color is the shape in this picture?" if i % 2 else "Color?"
        out.append(VQAItem(i, i, question, "icl/colour/en", "other", colour, answers, path, "train"))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[VQAItem]:
    return make_pool(tmp_path_factory.mktemp("pool"))


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


# ----- config and row split (pure: no DeepSpeed engine) ----------------------------------------------


def test_config_fills_auto_fields_from_the_distill_config(tmp_path):
    filled = load_config(ZERO2, batch_size=16, micro_batch_size=3, world_size=2, max_grad_norm=0.5)
    assert filled["train_micro_batch_size_per_gpu"] == 3  # 8 rows per rank, micro-batches of 3
    assert filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 18  # DeepSpeed's identity micro * accumulation * ranks
    assert filled["gradient_clipping"] == 0.5
    assert filled["zero_optimization"]["stage"] == 2 and not filled["bf16"]["enabled"]
    whole = load_config(OFFLOAD, batch_size=16, micro_batch_size=None, world_size=1, max_grad_norm=1.0)
    assert (whole["train_micro_batch_size_per_gpu"], whole["gradient_accumulation_steps"]) == (16, 1)
    assert whole["zero_force_ds_cpu_optimizer"] is False  # offload keeps our torch AdamW

    def refused(change: dict[str, Any], match: str) -> None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps({**json.loads(Path(ZERO2).read_text()), **change}))
        with pytest.raises(DeepSpeedConfigError, match=match):
            load_config(path, batch_size=16, micro_batch_size=None, world_size=1, max_grad_norm=1.0)

    refused({"gradient_clipping": 2.0}, "gradient_clipping is 2.0.*needs 1.0")
    refused({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu is 4")
    refused({"zero_optimization": {"stage": 3}}, "stage is 3")
    refused({"bf16": {"enabled": True}}, "bf16 is enabled")
    refused({"optimizer": {"type": "AdamW"}}, "remove the 'optimizer' section")
    refused({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, "zero_optimization.reduce_bucket")
    with pytest.raises(DeepSpeedConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json", batch_size=1, micro_batch_size=None, world_size=1, max_grad_norm=1)
    with pytest.raises(ValueError, match="no DeepSpeed config"):  # caught when the config is built
        tiny_distill("live", deepspeed=str(tmp_path / "missing.json"))


def test_ranks_split_a_step_into_the_same_number_of_micro_batches():
    draws = [Draw(q, (0,)) for q in range(5)]

    def split(rank: int, world: int, micro: int | None) -> tuple[list[list[Draw]], list[bool]]:
        run = DeepSpeedRun(engine=None, rank=rank, world_size=world, device=torch.device("cpu"), groups=[])
        return run.micro_batches(draws, micro)

    assert split(0, 1, 2) == ([draws[0:2], draws[2:4], draws[4:5]], [True, True, True])  # the plain chunks
    assert split(0, 1, None) == ([draws], [True])
    for world, micro in [(2, None), (2, 1), (2, 2), (3, 1), (4, 2), (8, None)]:
        splits = [split(rank, world, micro) for rank in range(world)]
        assert len({len(batches) for batches, _ in splits}) == 1  # ZeRO-2 reduces in every backward
        rows = [d for batches, counted in splits for b, c in zip(batches, counted, strict=True) if c for d in b]
        assert sorted(d.query for d in rows) == list(range(5))  # every row once, on some rank
        assert all(b for batches, _ in splits for b in batches)  # a stand-in row where a rank has none
    assert split(1, 2, 1) == ([[draws[1]], [draws[3]], [draws[0]]], [True, True, False])


def test_deepspeed_field_is_not_part_of_the_checkpoint_key(pool):
    from vectorutil import tiny

    model, processor = tiny("llava")
    pool_ = train_module.DemoPool(pool)
    plain = train_module.checkpoint_key(tiny_distill("live"), pool_, model, processor)
    assert train_module.checkpoint_key(tiny_distill("live", deepspeed=ZERO2), pool_, model, processor) == plain


# ----- one process, CPU, gloo ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["live", "mimic"])
def test_zero2_trains_the_vectors_of_the_plain_loop(method, pool, tmp_path):
    from vectorutil import assert_state_equal, state_copy, tiny

    model, processor = tiny("llava")
    before = state_copy(model)
    flags = [p.requires_grad for p in model.parameters()]
    logged: list[int] = []
    plain = distill(tiny_distill(method, seed=5), model, processor, pool, checkpoint_dir=tmp_path / "plain",
                    progress=False)
    ds = distill(tiny_distill(method, seed=5, deepspeed=ZERO2), model, processor, pool, checkpoint_dir=tmp_path / "ds",
                 progress=False, on_log=lambda step, _m: logged.append(step))
    assert_state_equal(model, before)  # every base weight bit-identical
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    assert logged == [1, 2, 3, 4] and ds.steps == 4 and ds.key == plain.key
    fresh = type(ds.vectors).for_adapter(adapter_for(model, processor), seed=5)
    for name, value in ds.vectors.state_dict().items():
        assert not torch.equal(value, fresh.state_dict()[name]), f"{name} did not train"
    # the same vectors: one rank, no active clipping (grad norms < 1 here), the same AdamW on the same groups
    assert max_diff(ds.vectors, plain.vectors) <= 1e-7
    assert [h["loss"] for h in ds.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-6)
    assert [h["lr"] for h in ds.history] == [h["lr"] for h in plain.history]
    # the returned vectors are plain tensors (own storage, no DeepSpeed attributes): saveable as safetensors
    assert all(not hasattr(p, "_hp_mapping") for p in ds.vectors.parameters())
    # the checkpoint is lmmops' format, with torch AdamW's per-parameter state
    (p_ckpt,) = (tmp_path / "plain").glob("*/last.pt")
    (d_ckpt,) = (tmp_path / "ds").glob("*/last.pt")
    p_state, d_state = torch.load(p_ckpt, weights_only=True), torch.load(d_ckpt, weights_only=True)
    assert p_state.keys() == d_state.keys() and d_state["step"] == 4
    p_opt, d_opt = p_state["optimizer"], d_state["optimizer"]
    assert d_opt["param_groups"] == p_opt["param_groups"]  # names, base_lr, lr of the last step, ids, ...
    assert d_opt["state"].keys() == p_opt["state"].keys()
    for i, entry in p_opt["state"].items():
        assert d_opt["state"][i].keys() == entry.keys()
        for name, value in entry.items():
            assert torch.allclose(d_opt["state"][i][name], value, rtol=1e-5, atol=1e-12), (i, name)


def test_clipping_comes_from_the_config_and_matches_torch(pool):
    from vectorutil import tiny

    model, processor = tiny("llava")
    kw = {"max_grad_norm": 0.05, "micro_batch_size": 3}  # LIVE's grad norms here are 0.13-0.17: every step clips
    plain = distill(tiny_distill("live", train=kw), model, processor, pool, progress=False)
    ds = distill(tiny_distill("live", train=kw, deepspeed=ZERO2), model, processor, pool, progress=False)
    assert all(h["grad_norm"] > 0.05 for h in plain.history)
    assert [h["grad_norm"] for h in ds.history] == pytest.approx([h["grad_norm"] for h in plain.history], rel=1e-5)
    assert max_diff(ds.vectors, plain.vectors) <= 1e-7  # observed ~1e-9: the clip factor's rounding


def test_optimizer_offload_config_runs_with_the_torch_adamw(pool):
    from vectorutil import tiny

    model, processor = tiny("llava")
    plain = distill(tiny_distill("mimic"), model, processor, pool, progress=False)
    ds = distill(tiny_distill("mimic", deepspeed=OFFLOAD), model, processor, pool, progress=False)
    assert max_diff(ds.vectors, plain.vectors) <= 1e-7


@pytest.mark.parametrize("first", ["plain", "deepspeed"])
def test_a_run_resumes_across_the_two_paths(first, pool, tmp_path):
    from vectorutil import tiny

    model, processor = tiny("llava")
    straight = distill(tiny_distill("mimic"), model, processor, pool, progress=False)
    paths = {"plain": None, "deepspeed": ZERO2}
    second = "deepspeed" if first == "plain" else "plain"
    half = distill(tiny_distill("mimic", deepspeed=paths[first]), model, processor, pool, checkpoint_dir=tmp_path,
                   stop_after=2, progress=False)
    resumed = distill(tiny_distill("mimic", deepspeed=paths[second]), model, processor, pool, checkpoint_dir=tmp_path,
                      progress=False)
    assert half.steps == 2 and resumed.resumed_from == 2 and resumed.steps == 4 and resumed.key == half.key
    assert max_diff(resumed.vectors, straight.vectors) <= 1e-7
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-6)


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_stops_before_the_step_and_keeps_the_last_good_checkpoint(where, pool, tmp_path, monkeypatch):
    from vectorutil import tiny

    model, processor = tiny("llava")
    good = distill(tiny_distill("live", deepspeed=ZERO2), model, processor, pool, stop_after=2, progress=False)
    calls = {"n": 0}

    def bad_at_step_3(*args: Any, **kwargs: Any) -> LossParts:
        calls["n"] += 1
        parts = live_loss(*args, **kwargs)
        if calls["n"] != 3:
            return parts
        if where == "loss":
            return parts._replace(total=parts.total * float("nan"))
        return parts._replace(distill=_NanGrad.apply(parts.distill))

    monkeypatch.setattr(train_module, "live_loss", bad_at_step_3)
    message = r"step 3: loss nan" if where == "loss" else r"step 3: gradient norm nan"
    with pytest.raises(NonFiniteLossError, match=message + r".*holds step 2"):
        distill(tiny_distill("live", deepspeed=ZERO2), model, processor, pool, checkpoint_dir=tmp_path, progress=False)
    (ckpt,) = tmp_path.glob("*/last.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 2
    for name, value in good.vectors.state_dict().items():
        assert torch.equal(state["vectors"][name], value), name
    monkeypatch.setattr(train_module, "live_loss", live_loss)
    resumed = distill(tiny_distill("live", deepspeed=ZERO2), model, processor, pool, checkpoint_dir=tmp_path,
                      progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4 and all(math.isfinite(h["loss"]) for h in resumed.history)


# ----- two ranks under torchrun ----------------------------------------------------------------------

TWO_RANK = {"batch_size": 3, "micro_batch_size": 1}  # 3 rows over 2 ranks, 1 per micro-batch: a stand-in row


@pytest.mark.slow
@pytest.mark.parametrize("method", ["live", "mimic"])
def test_two_ranks_under_torchrun_match_the_plain_loop(method, pool, tmp_path):
    from vectorutil import tiny

    out = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), str(Path(__file__).parent)])}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, method, str(pool[0].image_path.parent), str(tmp_path / "ckpt"), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = torch.load(out, weights_only=True)
    model, processor = tiny("llava")
    plain = distill(tiny_distill(method, train=TWO_RANK), model, processor, pool, progress=False)
    for name, value in plain.vectors.state_dict().items():
        assert torch.allclose(ranks["vectors"][name], value, rtol=1e-4, atol=1e-6), name
    assert ranks["losses"] == pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    assert ranks["logged"] == [1, 2, 3, 4]  # rank 0 only; the other rank logged nothing
    (ckpt,) = (tmp_path / "ckpt").glob("*/last.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4
    optimizer = train_module.make_optimizer(tiny_distill(method), plain.vectors)
    optimizer.load_state_dict(state["optimizer"])  # the gathered ZeRO state is torch AdamW's layout


def _two_rank_worker(method: str, images: str, checkpoint_dir: str, out: str) -> None:
    """One rank of the two-rank test (run by torchrun): train with zero2.json, rank 0 writes what it got."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    from vectorutil import tiny

    model, processor = tiny("llava")
    logged: list[int] = []
    result = distill(tiny_distill(method, train=TWO_RANK, deepspeed=ZERO2), model, processor, make_pool(Path(images)),
                     checkpoint_dir=Path(checkpoint_dir), progress=False, on_log=lambda step, _m: logged.append(step))
    if int(os.environ["RANK"]) == 0:
        torch.save({"vectors": result.vectors.state_dict(), "losses": [h["loss"] for h in result.history],
                    "logged": logged}, out)
    else:
        assert not logged


if __name__ == "__main__":
    _two_rank_worker(*sys.argv[1:5])
