"""Tests of lmmops.models.loading: save_pretrained round trips, GGUF, URIs refused, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lmmops.models import FAMILIES, ModelLoadError, UnsupportedModelError, adapter_for, build_tiny, load_model


@pytest.fixture(scope="module")
def save_tiny(tmp_path_factory):
    """save_tiny(family) -> (family, model, processor, dir): a tiny model saved with save_pretrained, once."""
    cache: dict[str, tuple] = {}

    def save(family: str) -> tuple:
        if family not in cache:
            model, processor = build_tiny(family)
            path = tmp_path_factory.mktemp(f"ckpt-{family}")
            model.save_pretrained(path)
            processor.save_pretrained(path)
            cache[family] = (family, model, processor, path)
        return cache[family]

    return save


@pytest.fixture(params=FAMILIES)
def saved(request, save_tiny):
    return save_tiny(request.param)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_gives_identical_weights_and_inputs(saved, items_for):
    family, model, processor, path = saved
    loaded, loaded_processor = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert_same_weights(model, loaded)
    demos, query = items_for(family)
    before = adapter_for(model, processor).build_prompt(demos, query, with_answer=True)
    after = adapter_for(loaded, loaded_processor).build_prompt(demos, query, with_answer=True)
    assert before.inputs.keys() == after.inputs.keys()
    for key in before.inputs:
        assert torch.equal(before.inputs[key], after.inputs[key]), key
    assert after.answer_span == before.answer_span
    with torch.no_grad():
        torch.testing.assert_close(model(**before.model_inputs()).logits, loaded(**after.model_inputs()).logits)


@pytest.mark.parametrize("family", ["llava", "llama"])
def test_dtype_and_attention_on_load(family, save_tiny, items_for):
    _family, _model, _processor, path = save_tiny(family)
    loaded, processor = load_model(path, dtype=torch.bfloat16, attn_implementation="eager")
    assert loaded.dtype == torch.bfloat16
    adapter = adapter_for(loaded, processor)
    assert adapter.attn_implementation == "eager"
    demos, query = items_for(family)
    batch = adapter.build_prompt(demos, query, with_answer=True).to("cpu", torch.bfloat16)
    assert batch.input_ids.dtype == torch.long  # only floating tensors (pixel values) are cast
    with torch.no_grad():
        assert loaded(**batch.model_inputs()).logits.dtype == torch.bfloat16


def test_tiny_spec():
    model, tokenizer = load_model("tiny:llama")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.bos_token == "<s>"
    with pytest.raises(ModelLoadError, match="idefics2"):
        load_model("tiny:gpt2")


def test_missing_path_names_it_and_lists_families(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as err:
        load_model(missing)
    assert str(missing) in str(err.value)
    assert all(family in str(err.value) for family in FAMILIES)
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)  # exists, but no config.json


def test_corrupt_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "config.json"))):
        load_model(tmp_path)


def test_corrupt_weights_name_the_path(tmp_path):
    model, tokenizer = build_tiny("llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path))):
        load_model(tmp_path)


def test_missing_processor_names_the_path(tmp_path):
    model, _processor = build_tiny("llava")
    model.save_pretrained(tmp_path)  # weights and config, no processor files
    with pytest.raises(ModelLoadError, match="processor") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unsupported_class_names_it_and_lists_families(tmp_path):
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "GPT2LMHeadModel" in message and str(tmp_path) in message
    assert all(family in message for family in FAMILIES)
    assert isinstance(err.value, ModelLoadError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("uri", ["models:/tiny-qwen@champion", "models:/tiny-qwen/3", "runs:/0123abcd/model",
                                 "s3://bucket/model"])
def test_uris_are_refused_with_a_pointer_to_the_resolver(uri):
    """lmmops.models resolves no registry URIs: the caller downloads them (lmmops.tracking.resolve_model_spec)."""
    with pytest.raises(ModelLoadError, match="resolve_model_spec") as err:
        load_model(uri)
    assert uri in str(err.value)


def write_llama_gguf(model: torch.nn.Module, tokenizer, path: Path) -> None:
    """Write a Llama model and its byte-level BPE tokenizer as an unquantised GGUF file (llama.cpp layout)."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)

    def permute(x: np.ndarray, heads: int) -> np.ndarray:  # llama.cpp's q/k row order
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    for name, tensor in model.state_dict().items():
        base, suffix = name.rsplit(".", 1)
        array = tensor.detach().float().numpy()
        if ".self_attn.q_proj" in name:
            array = permute(array, cfg.num_attention_heads)
        if ".self_attn.k_proj" in name:
            array = permute(array, cfg.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_file_loads_with_its_tokenizer(tmp_path):
    model, tokenizer = build_tiny("llama")
    path = tmp_path / "tiny-llama.gguf"
    write_llama_gguf(model, tokenizer, path)
    loaded, loaded_tokenizer = load_model(path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert_same_weights(model, loaded)
    text = "Question: What color is the zebra? Short answer: red"
    assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert adapter_for(loaded).family == "llama"


def test_missing_or_corrupt_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nothing\.gguf"):
        load_model(tmp_path / "nothing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF garbage")
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        load_model(broken)
