"""Vector files: round trip, metadata, and refusal to load onto a base model they were not trained for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from vectorutil import tiny

from lmmops.models import adapter_for
from lmmops.vectors import LiveVectors, MimicVectors, VectorMismatchError, load_vectors, read_metadata, save_vectors

BASE = {"base_model": "tiny-idefics2", "base_model_version": "3"}


@pytest.mark.parametrize("cls", [LiveVectors, MimicVectors])
def test_round_trip(tmp_path: Path, cls):
    model, _ = tiny("idefics2")
    vectors = cls.for_adapter(adapter_for(model), seed=5)
    out = save_vectors(tmp_path / "v", vectors, model, **BASE, extra={"teacher": "SQ", "shots": 1})
    meta = read_metadata(out)
    assert meta["method"] == cls.method and meta["family"] == "idefics2"
    assert meta["model_class"] == "Idefics2ForConditionalGeneration"
    assert (meta["num_layers"], meta["hidden_size"], meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]) == (
        2, 64, 4, 2, 16)
    assert meta["base_model"] == "tiny-idefics2" and meta["base_model_version"] == "3"
    assert meta["num_parameters"] == vectors.num_parameters() and meta["extra"]["shots"] == 1
    assert load_file(str(out / "vectors.safetensors")).keys() == vectors.state_dict().keys()
    loaded = load_vectors(out, model, **BASE)
    assert type(loaded) is cls
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vectors.state_dict().items())


def test_identical_vectors_give_identical_bytes(tmp_path: Path):
    # Several safetensors metadata keys come out in a random order per save; the file holds one key.
    model, _ = tiny("idefics2")
    vectors = LiveVectors.for_adapter(adapter_for(model), seed=1)
    files = [save_vectors(tmp_path / f"v{i}", vectors, model, **BASE) / "vectors.safetensors" for i in range(6)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), "pt") as f:
        assert json.loads(f.metadata()["lmmops_vectors"]) == {"format": read_metadata(files[0].parent)["format"],
                                                              "method": "live"}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model, _ = tiny("idefics2")
    return save_vectors(tmp_path / "v", MimicVectors.for_adapter(adapter_for(model)), model, **BASE)


def test_other_family_is_refused_naming_both_sides(saved: Path):
    model, _ = tiny("llava")
    with pytest.raises(VectorMismatchError) as err:
        load_vectors(saved, model, **BASE)
    message = str(err.value)
    assert "family: 'idefics2' vs 'llava'" in message
    assert "model_class: 'Idefics2ForConditionalGeneration' vs 'LlavaForConditionalGeneration'" in message


def test_other_base_model_or_version_is_refused(saved: Path):
    model, _ = tiny("idefics2")
    with pytest.raises(VectorMismatchError, match="base_model_version: '3' vs '4'"):
        load_vectors(saved, model, base_model="tiny-idefics2", base_model_version="4")
    with pytest.raises(VectorMismatchError, match="base_model: 'tiny-idefics2' vs 'other'"):
        load_vectors(saved, model, base_model="other", base_model_version="3")


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("num_layers", 32, "num_layers: 32 vs 2"),
        ("hidden_size", 4096, "hidden_size: 4096 vs 64"),
        ("num_heads", 8, "num_heads: 8 vs 4"),
        ("num_kv_heads", 4, "num_kv_heads: 4 vs 2"),
        ("head_dim", 128, "head_dim: 128 vs 16"),
    ],
)
def test_other_shape_is_refused(saved: Path, key: str, value: int, shown: str):
    meta_path = saved / "vectors.json"
    meta = json.loads(meta_path.read_text())
    meta[key] = value
    meta_path.write_text(json.dumps(meta))
    model, _ = tiny("idefics2")
    with pytest.raises(VectorMismatchError, match=shown):
        load_vectors(saved, model, **BASE)


def test_tensors_that_contradict_the_metadata_are_refused(tmp_path: Path):
    model, _ = tiny("idefics2")
    out = save_vectors(tmp_path / "v", LiveVectors.for_adapter(adapter_for(model)), model, **BASE)
    from safetensors.torch import save_file

    save_file({"vectors": torch.zeros(2, 63), "alpha": torch.zeros(2)}, str(out / "vectors.safetensors"))
    with pytest.raises(VectorMismatchError, match="tensors do not match"):
        load_vectors(out, model, **BASE)


def test_unknown_format_or_method(tmp_path: Path):
    (tmp_path / "vectors.json").write_text(json.dumps({"format": 99, "method": "live"}))
    with pytest.raises(ValueError, match="format 99"):
        read_metadata(tmp_path)
    (tmp_path / "vectors.json").write_text(json.dumps({"format": 1, "method": "lora"}))
    with pytest.raises(ValueError, match="unknown vector method 'lora'"):
        read_metadata(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing")
