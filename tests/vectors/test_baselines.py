"""The baselines of LIVE / MimIC (LoRA, task vector, function vector, ICV) and the `vector-baselines` stage.

Tiny random-weight models (`build_tiny`, one cached per family) and hand-made VQA items on solid-colour images:
the numbers are not the point, the mechanics are (fitting, applying and removing, what each hook touches, the
parameter counts, and that the stage never lets a choice read the test split).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from vectorutil import assert_state_equal, state_copy, tiny

from lmmops.config import (
    ConfigError,
    LoraBaselineConfig,
    VectorBaselinesConfig,
    from_dict,
    load_stage_config,
)
from lmmops.data.schemas import VQAAnswer, VQAItem
from lmmops.models import ICLItem, adapter_for
from lmmops.vectors.baselines import (
    BASELINES,
    attach_task_vector,
    evaluate_baseline,
    fit_baseline,
    icv_shift,
    injected_lora,
    lora_target_names,
    rank1_pca_directions,
)
from lmmops.vectors.baselines.common import captured, last_token_head_outputs
from lmmops.vectors.baselines.function_vector import function_vector_from_heads, shuffled_labels
from lmmops.vectors.baselines.lora import lora_config, lora_trainable_count, train_lora

from testutil import tiny_config

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]

CFG = tiny_config("vector-baselines", instruction="Answer with one word.",
                  lora={"epochs": 2, "batch_size": 4, "lr": 5e-3},
                  function_vector={"corrupted_prompts": 3, "heads": 3}, icv={"strengths": [0.1, 0.5]})


def vqa_item(i: int, image: Path, answer: str, split: str) -> VQAItem:
    answers = tuple(VQAAnswer(answer, "yes", k) for k in range(10))
    return VQAItem(i, i, "What color is the shape?" if i % 2 else "Color?", "icl/colour/en", "other", answer,
                   answers, image, split)


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[VQAItem]]:
    """8 train items of one task and 3 val items (other ids and images)."""
    root = tmp_path_factory.mktemp("pool")
    out: dict[str, list[VQAItem]] = {"train": [], "val": []}
    for i, colour in enumerate(COLOURS + COLOURS[:3]):
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        split = "train" if i < len(COLOURS) else "val"
        out[split].append(vqa_item(i, path, colour, split))
    return out


def probe_logits(model: Any, processor: Any) -> torch.Tensor:
    """Logits of a fixed zero-shot batch of two prompts (left padded, as at inference)."""
    adapter = adapter_for(model, processor)
    queries = [ICLItem(Image.new("RGB", (32, 32), "red"), "Color?"),
               ICLItem(Image.new("RGB", (32, 32), "blue"), "What color is the shape?")]
    batch = adapter.build_prompts([([], q) for q in queries], instruction=CFG.instruction)
    with torch.no_grad():
        return model(**batch.model_inputs()).logits


def grad_flags(model: Any) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


# ----- every baseline: fit, evaluate, apply, remove ----------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_fits_evaluates_and_leaves_the_model_as_it_was(name: str, items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    before, flags, plain = state_copy(model), grad_flags(model), probe_logits(model, processor)

    fitted = fit_baseline(name, CFG, model, processor, items["train"], items["val"])
    assert fitted.trainable_params > 0 and fitted.choice["val_accuracy"] >= 0.0
    assert_state_equal(model, before)  # LoRA training included: every base weight bit-identical
    assert grad_flags(model) == flags and not model.training
    assert torch.equal(probe_logits(model, processor), plain)

    result = evaluate_baseline(fitted, model, processor, items["val"], batch_size=8, max_new_tokens=3)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["queries"] == 3.0 and result["seconds"] > 0
    with fitted.applied(model, processor):
        assert not torch.equal(probe_logits(model, processor), plain)  # the intervention acts ...
    assert torch.equal(probe_logits(model, processor), plain)  # ... and is gone after, bit for bit
    assert_state_equal(model, before)
    assert not any("lora" in n for n, _ in model.named_modules())
    assert grad_flags(model) == flags


def test_trainable_sizes_of_the_vector_baselines(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    d, layers = adapter.hidden_size, adapter.num_layers
    assert fit_baseline("task_vector", CFG, model, processor, items["train"], items["val"]).trainable_params == d
    fitted = fit_baseline("icv", CFG, model, processor, items["train"], items["val"])
    assert fitted.trainable_params == layers * d and fitted.choice["strength"] in CFG.icv.strengths
    assert set(fitted.choice["val_accuracy_per_strength"]) == set(CFG.icv.strengths)


def test_unknown_baseline_and_empty_validation_are_errors(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="unknown baseline 'prefix'"):
        fit_baseline("prefix", CFG, model, processor, items["train"], items["val"])
    with pytest.raises(ValueError, match="validation split"):
        fit_baseline("icv", CFG, model, processor, items["train"], [])


# ----- LoRA ------------------------------------------------------------------------------------------


def test_lora_targets_only_the_decoder_attention_and_counts_by_hand():
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    names = lora_target_names(model, adapter, scope="decoder_self_attn")
    text_prefix = next(n for n, m in model.named_modules() if m is adapter.text_model)
    assert len(names) == 4 * adapter.num_layers and all(n.startswith(text_prefix + ".layers.") for n in names)
    # the vision tower has q/k/v projections too: peft must not see them
    assert any(n.endswith(".q_proj") and not n.startswith(text_prefix) for n, _ in model.named_modules())
    d, heads, kv, dh, r = adapter.hidden_size, adapter.num_heads, adapter.num_kv_heads, adapter.head_dim, 16
    by_hand = adapter.num_layers * r * ((d + heads * dh) + 2 * (d + kv * dh) + (heads * dh + d))
    assert by_hand == 2 * 16 * (128 + 96 + 96 + 128)  # the tiny config: 2 layers, d 64, 4 heads, 2 kv heads of 16
    with injected_lora(model, lora_config(CFG, names)) as peft_model:
        assert lora_trainable_count(peft_model) == by_hand
        adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
        assert sorted(adapted) == sorted(names)
    assert not any(hasattr(m, "lora_A") for m in model.modules())


def test_lora_training_is_seeded_and_leaves_the_global_rng_alone(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    cfg = dataclasses.replace(CFG, lora=LoraBaselineConfig(epochs=1, batch_size=4, lr=5e-3, dropout=0.5))
    states = []
    for seed in (1, 2):  # a different global RNG state before each fit: dropout must not depend on it
        torch.manual_seed(seed)
        before = torch.random.get_rng_state()
        states.append(fit_baseline("lora", cfg, model, processor, items["train"], items["val"]).tensors)
        assert torch.equal(torch.random.get_rng_state(), before)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def lora_state_modules(state: dict[str, torch.Tensor]) -> list[str]:
    """Module names (from the base model's root) that a peft LoRA state dict holds adapters for."""
    return sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in state})


def test_lora_scope_in_the_config_defaults_to_every_qkvo_and_rejects_others():
    assert LoraBaselineConfig().scope == "all_qkvo"
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert load_stage_config("vector-baselines", params).lora.scope == LoraBaselineConfig().scope
    with pytest.raises(ConfigError, match=r"p.yaml: vector-baselines.lora.scope: expected one of 'all_qkvo', "
                                          r"'decoder_self_attn', got 'vision'"):
        from_dict(VectorBaselinesConfig, {"lora": {"scope": "vision"}}, where="p.yaml", key="vector-baselines")


def test_lora_all_qkvo_also_targets_the_vision_tower_and_counts_by_hand():
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    before = state_copy(model)
    names = lora_target_names(model, adapter)  # the default scope: all_qkvo
    decoder = lora_target_names(model, adapter, scope="decoder_self_attn")
    vision = sorted(set(names) - set(decoder))
    assert set(decoder) <= set(names) and [n.rsplit(".", 1)[1] for n in vision] == ["k_proj", "q_proj", "v_proj"]
    assert all(".vision_tower." in n for n in vision)  # the CLIP tower: 1 layer of width 32, out_proj untouched
    by_hand = 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64)) + 3 * 16 * (32 + 32)
    with injected_lora(model, lora_config(CFG, names)) as peft_model:
        assert lora_trainable_count(peft_model) == by_hand == 17_408
        assert sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A")) == sorted(names)
    assert not any(hasattr(m, "lora_A") for m in model.modules())
    assert_state_equal(model, before)
    with pytest.raises(ValueError, match="unknown LoRA scope 'vision'"):
        lora_target_names(model, adapter, scope="vision")  # type: ignore[arg-type]


def test_lora_training_with_all_qkvo_changes_only_lora_and_unload_restores_the_base(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    before, flags, plain = state_copy(model), grad_flags(model), probe_logits(model, processor)
    cfg = dataclasses.replace(CFG, lora=LoraBaselineConfig(scope="all_qkvo", epochs=1, batch_size=4, lr=5e-3))
    fitted = fit_baseline("lora", cfg, model, processor, items["train"], items["val"])
    assert_state_equal(model, before)  # the optimizer saw the LoRA matrices only
    assert grad_flags(model) == flags and not any("lora" in n for n, _ in model.named_modules())
    names = lora_target_names(model, adapter)
    assert fitted.trainable_params == 17_408 and lora_state_modules(fitted.tensors) == sorted(names)
    # B starts at 0: every B moved, so every target (the vision tower's q/k/v included) was trained
    assert all(bool(v.abs().sum() > 0) for k, v in fitted.tensors.items() if ".lora_B." in k)
    with fitted.applied(model, processor):
        assert not torch.equal(probe_logits(model, processor), plain)
    assert torch.equal(probe_logits(model, processor), plain)
    assert_state_equal(model, before)
    assert grad_flags(model) == flags


def test_lora_training_with_decoder_self_attn_adapts_the_decoder_only(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    before, plain = state_copy(model), probe_logits(model, processor)
    cfg = dataclasses.replace(CFG, lora=LoraBaselineConfig(scope="decoder_self_attn", epochs=1, batch_size=4,
                                                           lr=5e-3))
    state, count, choice = train_lora(cfg, model, processor, adapter, items["train"], items["val"])
    decoder = lora_target_names(model, adapter, scope="decoder_self_attn")
    assert count == 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64)) == 14_336 and choice["targets"] == 8
    assert lora_state_modules(state) == sorted(decoder)
    assert_state_equal(model, before)
    with injected_lora(model, lora_config(cfg, decoder), state):
        assert not torch.equal(probe_logits(model, processor), plain)
    assert torch.equal(probe_logits(model, processor), plain)
    # a state of one scope never silently leaves the other scope's extra adapters at B = 0
    with pytest.raises(ValueError, match="LoRA adapters without a state"), \
            injected_lora(model, lora_config(cfg, lora_target_names(model, adapter)), state):
        pass
    assert_state_equal(model, before)
    assert not any(hasattr(m, "lora_A") for m in model.modules())


# ----- task vector -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava", "idefics2", "qwen2_vl", "idefics"])
def test_task_vector_replaces_only_the_last_prompt_token_at_layer_l(family: str):
    model, processor = tiny(family)
    adapter = adapter_for(model, processor)
    batch = adapter.build_prompt([], ICLItem(Image.new("RGB", (32, 32), "red"), "Color?"))
    vector, layer = torch.randn(adapter.hidden_size), 1

    def layer_outputs() -> list[torch.Tensor]:
        with torch.no_grad(), captured(list(adapter.decoder_layers)) as slots:
            model(**batch.model_inputs())
        return [s.clone() for s in slots]  # type: ignore[union-attr]

    plain = layer_outputs()
    with attach_task_vector(adapter, vector, layer):
        patched = layer_outputs()
    for l_, (p, q) in enumerate(zip(plain, patched, strict=True)):
        if l_ < layer:
            assert torch.equal(p, q)  # before layer L: untouched
        else:
            assert torch.equal(p[:, :-1], q[:, :-1])  # earlier positions never see the last token (causal)
    assert torch.equal(patched[layer][0, -1], vector)  # layer L's last position IS the vector
    assert torch.equal(layer_outputs()[layer], plain[layer])  # removed on exit


def test_task_vector_patches_the_prefill_forward_only():
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    batch = adapter.build_prompt([], ICLItem(Image.new("RGB", (32, 32), "red"), "Color?"))
    vector, seen = torch.randn(adapter.hidden_size), []
    with attach_task_vector(adapter, vector, 0):
        # registered after the patch, so it records the patched output of every forward
        handle = adapter.decoder_layers[0].register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
        try:
            model.generate(**batch.model_inputs(), max_new_tokens=3, min_new_tokens=3, do_sample=False)
        finally:
            handle.remove()
    assert len(seen) == 3 and seen[0].shape[1] > 1 and all(s.shape[1] == 1 for s in seen[1:])
    assert torch.equal(seen[0][0, -1], vector)
    assert not any(torch.equal(s[0, -1], vector) for s in seen[1:])


# ----- function vector -------------------------------------------------------------------------------


def test_function_vector_is_the_o_proj_image_of_the_top_heads(items: dict[str, list[VQAItem]]):
    model, processor = tiny("llava")
    adapter = adapter_for(model, processor)
    layers, heads, dh = adapter.num_layers, adapter.num_heads, adapter.head_dim
    mean = torch.randn(layers, heads, dh)
    scores = torch.zeros(layers, heads)
    scores[1, 2], scores[0, 3] = 2.0, 1.0
    vector, chosen = function_vector_from_heads(adapter, mean, scores, 2)
    assert chosen == [(1, 2), (0, 3)]
    w1 = adapter.self_attn_modules[1].o_proj.weight[:, 2 * dh : 3 * dh]
    w0 = adapter.self_attn_modules[0].o_proj.weight[:, 3 * dh : 4 * dh]
    assert torch.allclose(vector, w1 @ mean[1, 2] + w0 @ mean[0, 3], atol=1e-6)
    # the captured head outputs are o_proj's input, split per head
    specs = [([], ICLItem(Image.new("RGB", (32, 32), "red"), "Color?"))]
    heads_out = last_token_head_outputs(model, adapter, specs, instruction=None)
    assert heads_out.shape == (layers, 1, heads, dh)
    fitted = fit_baseline("function_vector", CFG, model, processor, items["train"], items["val"])
    assert len(fitted.choice["heads"]) == CFG.function_vector.heads
    assert fitted.trainable_params == adapter.hidden_size


def test_shuffled_labels_permute_demo_answers_only():
    image = Image.new("RGB", (32, 32), "red")
    demos = [ICLItem(image, f"q{i}", f"a{i}") for i in range(6)]
    query = ICLItem(image, "q", "gold")
    [(shuffled, kept)] = shuffled_labels([(demos, query)], seed=0)
    assert kept == query and [d.question for d in shuffled] == [d.question for d in demos]
    assert sorted(d.answer for d in shuffled) == sorted(d.answer for d in demos)  # type: ignore[type-var]
    assert [d.answer for d in shuffled] != [d.answer for d in demos]


# ----- ICV -------------------------------------------------------------------------------------------


def test_icv_keeps_every_token_norm_and_moves_towards_the_direction():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 64, generator=gen) * 3
    direction = torch.randn(64, generator=gen)
    out = icv_shift(hidden, direction, 0.3)
    assert torch.allclose(out.norm(dim=-1), hidden.norm(dim=-1), rtol=1e-5)
    unit = direction / direction.norm()
    assert bool(((out / out.norm(dim=-1, keepdim=True)) @ unit > (hidden / hidden.norm(dim=-1, keepdim=True)) @ unit)
                .all())
    assert torch.allclose(icv_shift(hidden, direction, 0.0), hidden, atol=1e-5)  # lambda 0: x itself


def test_rank1_pca_direction_by_hand():
    # differences along e0 with a spread along e1: the first principal direction is e1, signed by the mean
    diffs = torch.tensor([[[2.0, 1.0, 0.0], [2.0, -1.0, 0.0], [2.0, 3.0, 0.0], [2.0, -3.0, 0.0]]])
    mean = diffs.mean(dim=1)
    direction = rank1_pca_directions(diffs)
    pc = direction - mean
    assert torch.allclose(pc.abs(), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6)
    assert float((pc * mean).sum()) >= 0.0


# ----- the stage -------------------------------------------------------------------------------------


def test_stage_end_to_end_never_chooses_on_the_test_split(workspace: Path, project: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    import lmmops.vectors.baselines as bl
    from lmmops import tracking
    from lmmops.stages import metrics_path, run_stage

    fit_splits: list[set[str]] = []
    evaluated: list[set[str]] = []
    real_fit, real_eval = bl.fit_baseline, bl.evaluate_baseline

    def recording_fit(name: str, cfg: Any, model: Any, processor: Any, train: Any, val: Any) -> Any:
        fit_splits.append({it.split for it in train} | {it.split for it in val})
        # every evaluation during fitting (the choices) must see train or val items only
        from lmmops.vectors import train as train_module

        real_evaluate = train_module.evaluate_vectors

        def guarded(model: Any, processor: Any, vectors: Any, items: Any, **kw: Any) -> Any:
            assert {it.split for it in items} <= {"train", "val"}, "a choice read the test split"
            return real_evaluate(model, processor, vectors, items, **kw)

        with monkeypatch.context() as m:
            m.setattr(train_module, "evaluate_vectors", guarded)
            return real_fit(name, cfg, model, processor, train, val)

    def recording_eval(fitted: Any, model: Any, processor: Any, items: Any, **kw: Any) -> Any:
        evaluated.append({it.split for it in items})
        return real_eval(fitted, model, processor, items, **kw)

    monkeypatch.setattr(bl, "fit_baseline", recording_fit)
    monkeypatch.setattr(bl, "evaluate_baseline", recording_eval)
    cfg = dataclasses.replace(CFG, data_dir=str(workspace / "data"), model=str(workspace / "model"),
                              tasks=("icl/colour/en", "vqa"), lora=LoraBaselineConfig(epochs=1, batch_size=8),
                              latency_repeats=2)
    metrics = run_stage("vector-baselines", cfg, root=project)

    assert len(fit_splits) == 2 * len(BASELINES) and all(s == {"train", "val"} for s in fit_splits)
    assert evaluated == [{"test"}] * (2 * len(BASELINES))  # the test split: once per (pool, baseline)
    for name in ("zero-shot", *BASELINES):
        for pool in ("icl/colour/en", "vqa", "mean"):
            assert 0.0 <= metrics[f"test_acc/{name}/{pool}"] <= 1.0
    for name in BASELINES:
        assert metrics[f"trainable_params/{name}"] > 0 and f"latency_rel/{name}" not in metrics  # timings: MLflow
    assert metrics["trainable_params/task_vector"] == metrics["trainable_params/function_vector"] == 32.0
    assert metrics["trainable_params/icv"] == 2 * 32.0
    out = project / "reports/vector_baselines"
    results = json.loads((out / "results.json").read_text())
    assert set(results["test_accuracy"]) == {"icl/colour/en", "vqa"}
    assert all(results["latency_rel"][name] > 0 for name in BASELINES)
    assert "layer" in results["choices"]["vqa"]["task_vector"] and "epoch" in results["choices"]["vqa"]["lora"]
    assert "| **mean** |" in (out / "results.md").read_text()
    # the same test accuracies without the near-duplicate test items (near-copies of train items)
    from lmmops.data.loaders import load_vqa

    test = [it for it in load_vqa(workspace / "data", "test") if it.question_type == "icl/colour/en" or not it.is_icl]
    assert any(it.near_duplicate_of is not None for it in test)
    for pool in ("icl/colour/en", "vqa"):
        kept = [it for it in test if (it.question_type == pool or (pool == "vqa" and not it.is_icl))
                and it.near_duplicate_of is None]
        assert metrics[f"test_items_nodup/{pool}"] == len(kept)
        for name in ("zero-shot", *BASELINES):
            assert 0.0 <= metrics[f"test_acc_nodup/{name}/{pool}"] <= 1.0
    for name in ("zero-shot", *BASELINES):
        assert metrics[f"test_acc_nodup/{name}/mean"] == pytest.approx(
            sum(metrics[f"test_acc_nodup/{name}/{p}"] for p in ("icl/colour/en", "vqa")) / 2)
    assert "Without near-duplicates" in (out / "results.md").read_text()
    assert results["test_accuracy_nodup"]["vqa"]["zero-shot"] == metrics["test_acc_nodup/zero-shot/vqa"]
    assert json.loads(metrics_path(project, "vector-baselines").read_text()) == metrics
    [latest] = tracking.latest_stage_runs(project, ["vector-baselines"])
    logged = tracking.run_info(latest["run_id"])["metrics"]
    assert all(logged[f"latency_rel/{name}"] > 0 for name in BASELINES) and logged["seconds"] > 0
    with pytest.raises(ValueError, match="unknown pool 'icl/colour/xx'"):
        run_stage("vector-baselines", dataclasses.replace(cfg, tasks=("icl/colour/xx",)), root=project)


def test_pools_fitted_in_two_processes_equal_the_sequential_run(workspace: Path):
    """`workers: 2` (spawned processes, the model loaded once in each) gives the same accuracies, choices and
    sizes as one process: every baseline is seeded per pool and single-threaded."""
    from lmmops.data.loaders import load_vqa
    from lmmops.stages.vector_baselines import pool_results
    from lmmops.vectors.pools import task_pools

    cfg = dataclasses.replace(CFG, tasks=("icl/colour/en", "vqa"), lora=LoraBaselineConfig(epochs=1, batch_size=8),
                              latency_repeats=1)
    train = task_pools(load_vqa(workspace / "data", "train"), cfg.tasks)
    val = task_pools(load_vqa(workspace / "data", "val"), tuple(train))
    test = task_pools(load_vqa(workspace / "data", "test"), tuple(train))
    runs = {}
    for workers in (1, 2):
        finished: list[str] = []
        runs[workers] = pool_results(cfg, str(workspace / "model"), train, val, test, workers=workers,
                                     on_pool=lambda n, r, finished=finished: finished.append(r["pool"]))
        assert sorted(finished) == sorted(train)
    seq, par = runs[1], runs[2]
    assert list(seq) == list(par) == ["icl/colour/en", "vqa"]
    for pool in seq:
        for key in ("accuracy", "params", "val_accuracy", "choices"):
            assert seq[pool][key] == par[pool][key], (pool, key)
        assert set(seq[pool]["seconds"]) == {"zero-shot", *BASELINES} and all(
            t > 0 for t in par[pool]["seconds"].values())
