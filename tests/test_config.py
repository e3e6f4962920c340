"""Typed stage configs: strict loading, errors that name the key and the file."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

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


REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_every_stage_loads_from_the_repo_params():
    for stage, cls in STAGE_CONFIGS.items():
        assert isinstance(load_stage_config(stage, REPO_PARAMS), cls)


def _plain(value: Any) -> Any:
    """Values as params.yaml holds them: tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _default_problems(cls: type, section: dict[str, Any], key: str) -> list[str]:
    """Every field of `cls` (recursively into nested sections) that has a default other than params.yaml's value
    (`section`), or a default and no key in params.yaml; each problem names the dotted key."""
    problems = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name, default = f"{key}.{f.name}", _default(f)
        if f.name not in section:
            if default is not dataclasses.MISSING:
                problems.append(f"{name}: has a default ({default!r}) but no key in params.yaml")
            continue
        value = section[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            problems += _default_problems(hints[f.name], value, name)  # the nested section's own defaults ...
            if default is not dataclasses.MISSING:  # ... and the whole section's default (a default_factory)
                problems += [f"{name}.{k}: the section's default has {v!r}, params.yaml {value[k]!r}"
                             for k, v in _plain(default).items() if k in value and v != _plain(value[k])]
        elif default is not dataclasses.MISSING and _plain(default) != _plain(value):
            problems.append(f"{name}: default {default!r}, params.yaml {value!r}")
    return problems


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_config_defaults_are_the_params_yaml_values(stage: str):
    """params.yaml is the one place values live: a stage config field has no default or params.yaml's value,
    and every field with a default has its key in params.yaml (a default cannot hide a value)."""
    section = yaml.safe_load(REPO_PARAMS.read_text()).get(stage) or {}
    problems = _default_problems(STAGE_CONFIGS[stage], section, stage)
    assert not problems, "config.py defaults that are not params.yaml's:\n" + "\n".join(problems)


def test_default_check_names_the_dotted_key():
    assert _default_problems(Outer, {"name": "a", "lr": 0.1, "flag": False, "mode": None,
                                     "inner": {"n": 1, "sizes": [1, 2]}}, "s") == []
    problems = _default_problems(Outer, {"name": "a", "lr": 0.2, "flag": False, "inner": {"n": 1, "sizes": [1, 3]}},
                                 "s")
    assert problems == ["s.lr: default 0.1, params.yaml 0.2", "s.mode: has a default (None) but no key in params.yaml",
                        "s.inner.sizes: default (1, 2), params.yaml [1, 3]",
                        "s.inner.sizes: the section's default has [1, 2], params.yaml [1, 3]"]


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
