"""Parameter counts: the reference numbers, the formulas against real modules, LoRA against peft, the CLI."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig, get_peft_model
from vectorutil import tiny

from lmmops.cli import main
from lmmops.models import FAMILIES, adapter_for, build_tiny
from lmmops.vectors import (
    LiveVectors,
    MimicVectors,
    build_on_meta,
    lora_breakdown,
    lora_parameter_count,
    parameter_counts,
    params_table,
)
from lmmops.vectors.params import (
    CONFIG_DIR,
    DEFAULT_LORA_SCOPE,
    LORA_SCOPES,
    LORA_TARGETS,
    REFERENCE_CONFIGS,
    lora_target_modules,
)


def test_reference_numbers():
    rows = {r.name: r for r in params_table()}
    assert set(rows) == set(REFERENCE_CONFIGS)
    idefics, idefics2, qwen = rows["Idefics-9b"], rows["Idefics2-8b-base"], rows["Qwen2.5-VL-3B"]
    shape = (idefics.layers, idefics.hidden, idefics.heads, idefics.kv_heads, idefics.head_dim)
    assert shape == (32, 4096, 32, 32, 128)
    assert (idefics2.layers, idefics2.hidden, idefics2.heads, idefics2.kv_heads) == (32, 4096, 32, 8)
    assert (qwen.layers, qwen.hidden, qwen.heads, qwen.kv_heads, qwen.head_dim) == (36, 2048, 16, 2, 128)
    assert idefics.live == idefics2.live == 131_104
    assert idefics.mimic == idefics2.mimic == 263_168
    assert idefics.lora == 24_993_792
    assert qwen.live == 36 * 2048 + 36 and qwen.mimic == 36 * (2 * 16 * 128 + 16)
    assert qwen.lora == 36 * 16 * ((2048 + 2048) * 2 + (2048 + 256) * 2)  # Qwen's vision uses fused qkv/proj


def test_idefics_9b_lora_breakdown():
    groups = lora_breakdown(build_on_meta(CONFIG_DIR / REFERENCE_CONFIGS["Idefics-9b"]))

    def total(prefix: str) -> int:
        return sum(v for k, v in groups.items() if k.startswith(prefix))

    assert total("model.layers.") == 32 * 4 * 16 * (4096 + 4096) == 16_777_216
    assert total("model.gated_cross_attn_layers.") == 8 * 16 * (2 * (4096 + 4096) + 2 * (1280 + 4096))
    assert total("model.vision_model.") == 32 * 3 * 16 * (1280 + 1280)
    assert total("model.perceiver_resampler.") == 6 * 3 * 16 * (1280 + 1536)
    assert sum(groups.values()) == 24_993_792


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # from peft
@pytest.mark.parametrize("family", FAMILIES)
def test_formulas_equal_real_module_counts(family):
    model, _ = tiny(family)
    adapter = adapter_for(model)
    row = parameter_counts(family, model)
    assert row.live == LiveVectors.for_adapter(adapter).num_parameters()
    assert row.mimic == MimicVectors.for_adapter(adapter).num_parameters()
    fresh, _ = build_tiny(family, seed=7)  # peft wraps the model: use one of its own
    peft_model = get_peft_model(fresh, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                       "o_proj"]))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert row.lora == trainable == lora_parameter_count(model)


def test_cli_prints_the_table(capsys):
    assert main(["params-table"]) == 0
    out = capsys.readouterr().out
    idefics = next(line for line in out.splitlines() if line.startswith("Idefics-9b "))
    assert "131,104" in idefics and "263,168" in idefics and "24,993,792" in idefics
    idefics2 = next(line for line in out.splitlines() if line.startswith("Idefics2-8b-base "))
    assert "131,104" in idefics2 and "263,168" in idefics2
    assert main(["params-table", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(REFERENCE_CONFIGS)


# ----- LoRA scopes (all_qkvo: peft's bare-suffix matching, the default; decoder_self_attn) -----------------


def test_reference_numbers_per_lora_scope():
    rows = {r.name: r for r in params_table()}
    assert LORA_SCOPES == ("all_qkvo", "decoder_self_attn") and DEFAULT_LORA_SCOPE == "all_qkvo"
    assert 32 * 4 * 16 * (4096 + 4096) == 16_777_216  # 32 layers x q/k/v/o, each 4096 -> 4096, r 16
    assert rows["Idefics-9b"].lora_by_scope == {"all_qkvo": 24_993_792, "decoder_self_attn": 16_777_216}
    # Idefics2: 8 kv heads of 128 (k, v: 4096 -> 1024); its SigLIP tower has q/k/v and the perceiver q/k/v/o too
    assert rows["Idefics2-8b-base"].lora_by_scope["decoder_self_attn"] == 32 * 16 * (
        2 * (4096 + 4096) + 2 * (4096 + 1024)) == 13_631_488
    qwen = rows["Qwen2.5-VL-3B"].lora_by_scope  # the vision blocks use fused qkv / proj: nothing more to adapt
    assert qwen["all_qkvo"] == qwen["decoder_self_attn"] == 36 * 16 * ((2048 + 2048) * 2 + (2048 + 256) * 2)
    for row in rows.values():
        assert row.lora == row.lora_by_scope[DEFAULT_LORA_SCOPE]
    idefics = build_on_meta(CONFIG_DIR / REFERENCE_CONFIGS["Idefics-9b"])
    assert lora_parameter_count(idefics) == 24_993_792
    assert lora_parameter_count(idefics, scope="decoder_self_attn") == 16_777_216
    assert set(lora_breakdown(idefics, scope="decoder_self_attn")) == {f"model.layers.*.self_attn.{t}"
                                                                      for t in LORA_TARGETS}


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # from peft
def test_lora_scopes_on_the_tiny_llava_against_peft():
    """Tiny llava: CLIP tower 1 layer of width 32 (q/k/v_proj + out_proj), decoder 2 layers, d 64, kv 2 x 16."""
    model, _ = tiny("llava")
    names = {s: [n for n, _ in lora_target_modules(model, scope=s)] for s in LORA_SCOPES}
    vision = [n for n in names["all_qkvo"] if ".vision_tower." in n]
    assert sorted(n.rsplit(".", 1)[1] for n in vision) == ["k_proj", "q_proj", "v_proj"]  # out_proj: not a target
    assert sorted(names["all_qkvo"]) == sorted(vision + names["decoder_self_attn"])
    by_hand = {"decoder_self_attn": 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64)), "all_qkvo": 0}
    by_hand["all_qkvo"] = by_hand["decoder_self_attn"] + 3 * 16 * (32 + 32)
    assert by_hand == {"decoder_self_attn": 14_336, "all_qkvo": 17_408}
    assert parameter_counts("llava", model).lora_by_scope == by_hand
    suffixes = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for scope, targets in [("all_qkvo", suffixes), ("all_qkvo", names["all_qkvo"]),
                           ("decoder_self_attn", names["decoder_self_attn"])]:
        fresh, _ = build_tiny("llava", seed=7)  # peft wraps the model: use one of its own
        peft_model = get_peft_model(fresh, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
        trainable, _ = peft_model.get_nb_trainable_parameters()
        adapted = sorted(n for n, m in fresh.named_modules() if hasattr(m, "lora_A"))
        assert trainable == by_hand[scope] == lora_parameter_count(model, scope=scope)
        assert adapted == sorted(names[scope])


def test_unknown_lora_scope_is_an_error():
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="unknown LoRA scope 'everything'; scopes: all_qkvo, decoder_self_attn"):
        lora_parameter_count(model, scope="everything")  # type: ignore[arg-type]


def test_cli_prints_both_lora_scopes(capsys):
    assert main(["params-table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("  ")[-2:] == ["LoRA (all q/k/v/o)", "LoRA (decoder self-attn)"]
    idefics = next(line for line in lines if line.startswith("Idefics-9b "))
    assert idefics.split()[-2:] == ["24,993,792", "16,777,216"]
    assert main(["params-table", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Idefics-9b"]["lora_by_scope"] == {"all_qkvo": 24_993_792, "decoder_self_attn": 16_777_216}
