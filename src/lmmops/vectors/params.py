"""Trainable-parameter counts of LIVE, MimIC and LoRA for the reference architectures (`lmmops params-table`).

The architectures are the published hyperparameters of Idefics-9b, Idefics2-8b-base and Qwen2.5-VL-3B(-Instruct),
kept as config JSON files in `lmmops/vectors/configs/` (nothing is downloaded). Each is built on the meta
device (real transformers modules, no memory, well under a second) and counted from those modules:
  LIVE   L*d + L                      (`LiveVectors.count`: one d-vector and one alpha per decoder layer)
  MimIC  L*(2*H*d_h + H)              (`MimicVectors.count`: v and w per head, b per head)
  LoRA   sum over the targeted nn.Linear modules of r*(in + out), for each scope (`LORA_SCOPES`):
           all_qkvo           every module peft's `target_modules=["q_proj","k_proj","v_proj","o_proj"]`
                              selects (name equal to a target or ending in "." + target): the reference's,
                              the default (`lora` of a row)
           decoder_self_attn  the q/k/v/o_proj of the language model's decoder self-attention only
The tests check each formula against the modules themselves on tiny models (LoRA against peft).

Why LoRA(r=16) on Idefics-9b is 24,993,792 and not the text layers' 16,777,216: peft's name matching also
selects the q/k/v/o projections of the gated cross-attention layers (8 of them: every 4th layer; k and v read
the 1280-wide vision features: 8 * 16 * (2*(4096+4096) + 2*(1280+4096)) = 3,473,408), the q/k/v of the
CLIP ViT-H/14 vision tower (its output projection is `out_proj`: 32 * 3 * 16 * (1280+1280) = 3,932,160) and
the q/k/v of the perceiver resampler (6 blocks, 16 heads of 96; output `output_proj`:
6 * 3 * 16 * (1280+1536) = 811,008): 16,777,216 + 3,473,408 + 3,932,160 + 811,008 = 24,993,792 (the talk's
"25M"; the decoder_self_attn scope gives the 16,777,216). `lora_breakdown` prints this split for any architecture.

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
from typing import Any, get_args

import torch
import transformers
from torch import nn

from lmmops.config import LoraScope
from lmmops.models import ModelAdapter, adapter_for
from lmmops.vectors.live import LiveVectors
from lmmops.vectors.mimic import MimicVectors

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REFERENCE_CONFIGS: dict[str, str] = {
    "Idefics-9b": "idefics-9b.json",
    "Idefics2-8b-base": "idefics2-8b-base.json",
    "Qwen2.5-VL-3B": "qwen2.5-vl-3b.json",
}
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_SCOPES: tuple[LoraScope, ...] = get_args(LoraScope)  # ("all_qkvo", "decoder_self_attn")
DEFAULT_LORA_SCOPE: LoraScope = "all_qkvo"  # = LoraBaselineConfig.scope's default (the reference's)


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


def lora_target_modules(model: nn.Module, *, scope: LoraScope = DEFAULT_LORA_SCOPE,
                        targets: Sequence[str] = LORA_TARGETS,
                        adapter: ModelAdapter | None = None) -> list[tuple[str, nn.Linear]]:
    """(full name from `model`'s root, module) of every LoRA target of `scope` (module docstring), in module order.

    all_qkvo: every module named `t` or `*.t` for t in `targets` (peft's matching; each must be an nn.Linear).
    decoder_self_attn: the nn.Linear children `targets` of `adapter.self_attn_modules` (adapter_for(model) if None).
    """
    if scope == "all_qkvo":
        selected = []
        for name, module in model.named_modules():
            if any(name == t or name.endswith("." + t) for t in targets):
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"LoRA target {name} is a {type(module).__name__}, not nn.Linear")
                selected.append((name, module))
        return selected
    if scope == "decoder_self_attn":
        adapter = adapter if adapter is not None else adapter_for(model)
        names = {id(m): n for n, m in model.named_modules()}
        selected = []
        for attn in adapter.self_attn_modules:
            if id(attn) not in names:
                raise ValueError(f"{adapter.family}: a decoder self-attention module is not inside the given model")
            for child in targets:
                module = getattr(attn, child, None)
                if isinstance(module, nn.Linear):
                    selected.append((f"{names[id(attn)]}.{child}", module))
        return selected
    raise ValueError(f"unknown LoRA scope {scope!r}; scopes: {', '.join(LORA_SCOPES)}")


def lora_parameter_count(model: nn.Module, *, rank: int = 16, targets: Sequence[str] = LORA_TARGETS,
                         scope: LoraScope = DEFAULT_LORA_SCOPE) -> int:
    """Trainable scalars of LoRA with rank `rank` on the targets of `scope` (`lora_target_modules`)."""
    return sum(rank * (m.in_features + m.out_features) for _, m in lora_target_modules(model, scope=scope,
                                                                                       targets=targets))


def lora_breakdown(model: nn.Module, *, rank: int = 16, targets: Sequence[str] = LORA_TARGETS,
                   scope: LoraScope = DEFAULT_LORA_SCOPE) -> dict[str, int]:
    """LoRA scalars per module group (layer indices replaced by `*`, e.g. `model.layers.*.self_attn.q_proj`)."""
    groups: dict[str, int] = {}
    for name, m in lora_target_modules(model, scope=scope, targets=targets):
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
    lora: int  # the default scope's (all_qkvo, the reference's)
    lora_rank: int
    lora_by_scope: dict[str, int]  # every scope of LORA_SCOPES


def parameter_counts(name: str, model: nn.Module, *, lora_rank: int = 16) -> ParamsRow:
    """LIVE, MimIC and LoRA trainable-parameter counts of `model` (any adapter-covered model, meta or real);
    LoRA for every scope (`lora_by_scope`), `lora` = the default scope's."""
    adapter = adapter_for(model)
    by_scope = {s: sum(lora_rank * (m.in_features + m.out_features)
                       for _, m in lora_target_modules(model, scope=s, adapter=adapter))
                for s in LORA_SCOPES}
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
        lora=by_scope[DEFAULT_LORA_SCOPE],
        lora_rank=lora_rank,
        lora_by_scope=by_scope,
    )


def params_table(configs: Mapping[str, str | Path] | None = None, *, lora_rank: int = 16) -> list[ParamsRow]:
    """One row per architecture (default: the three reference configs kept in the repo)."""
    configs = configs if configs is not None else {k: CONFIG_DIR / v for k, v in REFERENCE_CONFIGS.items()}
    return [parameter_counts(name, build_on_meta(path), lora_rank=lora_rank) for name, path in configs.items()]


_SCOPE_LABELS = {"all_qkvo": "all q/k/v/o", "decoder_self_attn": "decoder self-attn"}


def format_params_table(rows: Sequence[ParamsRow]) -> str:
    """A fixed-width text table with thousands separators."""
    header = ["model", "layers", "hidden", "heads", "kv", "d_h", "LIVE", "MimIC",
              *(f"LoRA ({_SCOPE_LABELS[s]})" for s in LORA_SCOPES)]
    body = [
        [r.name, str(r.layers), str(r.hidden), str(r.heads), str(r.kv_heads), str(r.head_dim),
         f"{r.live:,}", f"{r.mimic:,}", *(f"{r.lora_by_scope[s]:,}" for s in LORA_SCOPES)]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    ranks = sorted({r.lora_rank for r in rows})
    notes = [f"LoRA r={', '.join(map(str, ranks))}. all q/k/v/o: every q_proj/k_proj/v_proj/o_proj, as peft's suffix "
             "matching selects them (the default scope, the reference's);",
             "decoder self-attn: those of the language model's decoder self-attention only."]
    return "\n".join([line(header), *(line(b) for b in body), *notes])


def rows_as_json(rows: Sequence[ParamsRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
