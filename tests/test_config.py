"""Typed stage configs: strict loading, errors that name the key and the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmmops.config import (
    STAGE_CONFIGS,
    ConfigError,
    GenerateConfig,
    flatten,
    from_dict,
    load_stage_config,
    params_hash,
    to_dict,
)


@dataclass(frozen=True)
class Inner:
    n: int = 1
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str
    lr: float = 0.1
    flag: bool = False
    mode: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_builds_nested_and_coerces_lists_to_tuples():
    cfg = from_dict(Outer, {"name": "a", "lr": 1, "inner": {"sizes": [3, 4]}}, where="p.yaml", key="s")
    assert cfg == Outer(name="a", lr=1.0, inner=Inner(n=1, sizes=(3, 4)))
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a", "lrr": 1}, "p.yaml: unknown key s.lrr"),
        ({"name": "a", "inner": {"m": 1}}, "p.yaml: unknown key s.inner.m"),
        ({}, "p.yaml: missing required key s.name"),
        ({"name": 3}, "p.yaml: s.name: expected a string"),
        ({"name": "a", "flag": "yes"}, "p.yaml: s.flag: expected true or false"),
        ({"name": "a", "inner": {"n": 1.5}}, "p.yaml: s.inner.n: expected an integer"),
        ({"name": "a", "inner": {"n": True}}, "p.yaml: s.inner.n: expected an integer"),
        ({"name": "a", "inner": {"sizes": [1, "x"]}}, "p.yaml: s.inner.sizes[1]: expected an integer"),
        ({"name": "a", "inner": 3}, "p.yaml: s.inner: expected a mapping"),
    ],
)
def test_errors_name_file_and_dotted_key(data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, data, where="p.yaml", key="s")
    assert message in str(exc.value)


def test_optional_accepts_none_and_value():
    assert from_dict(Outer, {"name": "a", "mode": None}, where="p", key="s").mode is None
    assert from_dict(Outer, {"name": "a", "mode": "x"}, where="p", key="s").mode == "x"


def test_misspelled_key_in_params_file(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("generate:\n  seed: 1\n  vqa:\n    trian: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_stage_config("generate", params)
    assert str(params) in str(exc.value)
    assert "generate.vqa.trian" in str(exc.value)


def test_unknown_section_and_missing_file(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("genrate:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"unknown section.*'genrate'"):
        load_stage_config("generate", params)
    with pytest.raises(ConfigError, match="file not found"):
        load_stage_config("generate", tmp_path / "nope.yaml")


def test_every_stage_loads_from_the_repo_params():
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    for stage, cls in STAGE_CONFIGS.items():
        assert isinstance(load_stage_config(stage, repo_params), cls)


def test_params_hash_is_stable_and_sensitive():
    a, b = GenerateConfig(), GenerateConfig(seed=1)
    assert params_hash(a) == params_hash(GenerateConfig())
    assert params_hash(a) != params_hash(b)
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}
    assert to_dict(a)["seed"] == 0


@pytest.mark.parametrize("stage", ["icl-eval", "live", "mimic", "vector-baselines"])
def test_decoding_keys_load_and_bad_values_name_the_key(tmp_path: Path, stage: str):
    params = tmp_path / "params.yaml"
    params.write_text(f"{stage}:\n  num_beams: 3\n  answer_cut: ['Question|Answer|Short', ', ']\n")
    cfg = load_stage_config(stage, params)
    assert cfg.num_beams == 3 and cfg.answer_cut == ("Question|Answer|Short", ", ")
    assert STAGE_CONFIGS[stage]().num_beams == 1 and STAGE_CONFIGS[stage]().answer_cut == ()  # greedy, no cut
    for body, key, problem in [
        ("num_beams: 0", "num_beams", "must be >= 1"),
        ("num_beams: 1.5", "num_beams", "expected an integer"),
        ("answer_cut: ['ok', 'Question(']", "answer_cut[1]", "'Question(' is not a valid regex"),
        ("answer_cut: ['x*']", "answer_cut[0]", "'x*' matches the empty string"),
        ("answer_cut: ', '", "answer_cut", "expected a list"),
    ]:
        params.write_text(f"{stage}:\n  {body}\n")
        with pytest.raises(ConfigError) as exc:
            load_stage_config(stage, params)
        assert f"{params}: {stage}.{key}: {problem}" in str(exc.value)
