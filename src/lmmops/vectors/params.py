"""Trainable-parameter counts of LIVE, MimIC and LoRA for the reference architectures (`lmmops params-table`).

The architectures are the published hyperparameters of Idefics-9b, Idefics2-8b-base and Qwen2.5-VL-3B(-Instruct),
kept as config JSON files in `lmmops/vectors/configs/` (nothing is downloaded). Each is built on the meta
device (real transformers modules, no memory, well under a second) and counted from those modules:
  LIVE   L*d + L                      (`LiveVectors.count`: one d-vector and one alpha per decoder layer)
  MimIC  L*(2*H*d_h + H)              (`MimicVectors.count`: v and w per head, b per head)
  LoRA   sum over every nn.Linear that peft's `target_modules=["q_proj","k_proj","v_proj","o_proj"]`
         selects (module name equal to a target or ending in "." + target) of r*(in + out).
The tests check each formula against the modules themselves on tiny models (LoRA against peft).

Why LoRA(r=16) on Idefics-9b is 24,993,792 and not the text layers' 16,777,216: peft's name matching also
selects the q/k/v/o projections of the gated cross-attention layers (8 of them: every 4th layer; k and v read
the 1280-wide vision features: 8 * 16 * (2*(4096+4096) + 2*(1280+4096)) = 3,473,408), the q/k/v of the
CLIP ViT-H/14 vision tower (its output projection is `out_proj`: 32 * 3 * 16 * (1280+1280) = 3,932,160) and
the q/k/v of the perceiver resampler (6 blocks, 16 heads of 96; output `output_proj`:
6 * 3 * 16 * (1280+1536) = 811,008): 16,777,216 + 3,473,408 + 3,932,160 + 811,008 = 24,993,792 (the talk's
"25M"). `lora_breakdown` prints this split for any architecture.

Run: `lmmops params-table [--breakdown] [--json]`, or `python -c "from lmmops.vectors import params_table,
format_params_table; print(format_params_table(params_table()))"`.

Departures: none; counts are of trainable scalars (LoRA's A and B matrices, no biases).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from lmmops.models import adapter_for
from lmmops.vectors.live import LiveVectors
from lmmops.vectors.mimic import MimicVectors

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REFERENCE_CONFIGS: dict[str, str] = {
    "Idefics-9b": "idefics-9b.json",
    "Idefics2-8b-base": "idefics2-8b-base.json",
    "Qwen2.5-VL-3B": "qwen2.5-vl-3b.json",
}
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def load_reference_config(path: str | Path) -> tuple[type[nn.Module], Any]:
    """(model class, config) from a config JSON (transformers' config.json layout, `architectures` first)."""
    data = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
    architecture = data.get("architectures", [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ValueError(f"{path}: unknown or missing architectures[0] {architecture!r}")
    return model_class, transformers.AutoConfig.for_model(**data)


def build_on_meta(path: str | Path) -> nn.Module:
    """The architecture of a config JSON as real modules on the meta device (no weights allocated)."""
    model_class, config = load_reference_config(path)
    with torch.device("meta"):
        return model_class(config)


def _lora_targets(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    selected = []
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if not isinstance(module, nn.Linear):
                raise ValueError(f"LoRA target {name} is a {type(module).__name__}, not nn.Linear")
            selected.append((name, module))
    return selected


def lora_parameter_count(model: nn.Module, *, rank: int = 16, targets: Sequence[str] = LORA_TARGETS) -> int:
    """Trainable scalars of LoRA with rank `rank` on the modules peft's `target_modules=targets` selects."""
    return sum(rank * (m.in_features + m.out_features) for _, m in _lora_targets(model, targets))


def lora_breakdown(model: nn.Module, *, rank: int = 16, targets: Sequence[str] = LORA_TARGETS) -> dict[str, int]:
    """LoRA scalars per module group (layer indices replaced by `*`, e.g. `model.layers.*.self_attn.q_proj`)."""
    groups: dict[str, int] = {}
    for name, m in _lora_targets(model, targets):
        key = re.sub(r"\.\d+(?=\.|$)", ".*", name)
        groups[key] = groups.get(key, 0) + rank * (m.in_features + m.out_features)
    return groups


@dataclass(frozen=True)
class ParamsRow:
    name: str
    model_class: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    live: int
    mimic: int
    lora: int
    lora_rank: int


def parameter_counts(name: str, model: nn.Module, *, lora_rank: int = 16) -> ParamsRow:
    """LIVE, MimIC and LoRA trainable-parameter counts of `model` (any adapter-covered model, meta or real)."""
    adapter = adapter_for(model)
    layers, hidden, heads, head_dim = adapter.num_layers, adapter.hidden_size, adapter.num_heads, adapter.head_dim
    return ParamsRow(
        name=name,
        model_class=type(model).__name__,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=adapter.num_kv_heads,
        head_dim=head_dim,
        live=LiveVectors.count(layers, hidden),
        mimic=MimicVectors.count(layers, heads, head_dim),
        lora=lora_parameter_count(model, rank=lora_rank),
        lora_rank=lora_rank,
    )


def params_table(configs: Mapping[str, str | Path] | None = None, *, lora_rank: int = 16) -> list[ParamsRow]:
    """One row per architecture (default: the three reference configs kept in the repo)."""
    configs = configs if configs is not None else {k: CONFIG_DIR / v for k, v in REFERENCE_CONFIGS.items()}
    return [parameter_counts(name, build_on_meta(path), lora_rank=lora_rank) for name, path in configs.items()]


def format_params_table(rows: Sequence[ParamsRow]) -> str:
    """A fixed-width text table with thousands separators."""
    header = ["model", "layers", "hidden", "heads", "kv", "d_h", "LIVE", "MimIC", "LoRA"]
    body = [
        [r.name, str(r.layers), str(r.hidden), str(r.heads), str(r.kv_heads), str(r.head_dim),
         f"{r.live:,}", f"{r.mimic:,}", f"{r.lora:,}"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    ranks = sorted({r.lora_rank for r in rows})
    note = f"LoRA: r={', '.join(map(str, ranks))} on every q_proj/k_proj/v_proj/o_proj (peft name matching)"
    return "\n".join([line(header), *(line(b) for b in body), note])


def rows_as_json(rows: Sequence[ParamsRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
