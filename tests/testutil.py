"""Helpers shared by test modules: the one place for test-size configs (`TINY`, `tiny_config`, `tiny_distill`),
a generated tiny project, hand-made ICL items (`icl_items`, `solid`), and git. Import as
`from testutil import tiny_config, tiny_project`.

The config defaults equal params.yaml (the full-size run), so a test never relies on a default for a small value:
it takes the stage's config from `tiny_config(stage, **changes)`, i.e. params.yaml's values with `TINY[stage]` and
then `changes` over them. tests/test_pipeline.py writes the same `TINY` sections into its copy of params.yaml.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from lmmops.config import STAGE_CONFIGS, from_dict

if TYPE_CHECKING:
    from lmmops.models import ICLItem

# The pools, shots and decoding that icl-reference shares with live and mimic (they check that it is the same).
_POOLS_AND_DECODING = {"tasks": ["icl/colour/en", "vqa"], "shots": 2, "instruction": "Answer with one word.",
                       "eval_batch_size": 16, "max_new_tokens": 3, "threads": 1}
_VECTOR_STAGE = {**_POOLS_AND_DECODING, "selection_rounds": 2, "latency_repeats": 1, "workers": 1}
# lr None: the paper's learning rate (lmmops.vectors.train.DEFAULT_LR), gentle for random-ish tiny models
_TRAIN = {"steps": 4, "batch_size": 4, "lr": None, "log_every": 1, "checkpoint_every": 1}

# Per stage, the params.yaml keys that a test-size run changes (nested sections as nested mappings).
TINY: dict[str, dict[str, Any]] = {
    "generate": {
        "vqa": {"train": 60, "val": 20, "test": 20},
        "deepscaler": {"train": 4, "test": 2},
        "multimodal": {"multimath_train": 1, "multimath_test": 1, "geo_train": 1, "geo_test": 1,
                       "perce_reason_train": 1, "perce_reason_test": 1},
        "sokoban": {"train": 1, "test": 1, "sizes": [6], "num_boxes": [1]},
    },
    # A test-size LLaVA, 2 steps (random-ish weights: the plumbing is what is tested), no generated extra rows.
    "bootstrap": {
        "text_hidden": 32, "text_layers": 2, "text_heads": 2, "text_kv_heads": 1, "text_intermediate": 64,
        "vision_hidden": 16, "vision_layers": 1, "vision_heads": 1, "vision_intermediate": 32,
        "steps": 2, "batch_size": 4, "warmup_steps": 1, "max_shots": 2, "vqa_pack": 2,
        "long_icl_rows": 1, "long_max_shots": 4, "extra_reasoning_rows": 0,
        "checkpoint_every": 1, "log_every": 1, "eval_shots": [0, 1], "eval_repeats": 1, "eval_max_new_tokens": 8,
        "perception_rows": 1, "perception_pack": 2, "perception_figures": 12, "multimodal_examples": 6,
        "multimodal_pack": 1, "figure_eval_items": 3, "figure_eval_samples": 2, "figure_eval_max_new_tokens": 8,
    },
    "index": {"batch_size": 16, "threads": 1},
    "icl-eval": {
        "max_queries": 8, "strategies": ["zero-shot", "RS", "SI", "SQ", "SQA", "SQA-pseudo", "mixed"], "shots": [1, 2],
        "manipulations": ["wrong_answer", "reverse"], "analysis_shots": 2, "batch_size": 8, "max_new_tokens": 3,
        "threads": 1,
    },
    "icl-reference": _POOLS_AND_DECODING,
    "live": {**_VECTOR_STAGE, "train": {**_TRAIN, "alpha_lr": 0.01}},
    "mimic": {**_VECTOR_STAGE, "train": _TRAIN},
    "vector-baselines": {
        "tasks": ["icl/colour/en", "vqa"], "shots": 2, "batch_size": 8, "max_new_tokens": 3, "latency_repeats": 1,
        "threads": 1, "workers": 1,
        "lora": {"epochs": 1, "batch_size": 8}, "task_vector": {"prompts": 4},
        "function_vector": {"prompts": 4, "corrupted_prompts": 2, "heads": 2}, "icv": {"pairs": 4, "strengths": [0.1]},
    },
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` over it; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_config(stage: str, **changes: Any) -> Any:
    """The typed config of `stage` at test size: params.yaml's values (the dataclass defaults) with `TINY[stage]`
    and then `changes` over them (a nested section as a mapping of the keys it changes)."""
    return from_dict(STAGE_CONFIGS[stage], merged(TINY.get(stage, {}), changes), where="tests/testutil.py", key=stage)


def tiny_distill(method: str, *, train: dict[str, Any] | None = None, **fields: Any) -> Any:
    """A test-size lmmops.vectors.train.DistillConfig built from `tiny_config(method)`, as the stage builds it:
    `train` changes training settings, `fields` the DistillConfig's other fields (seed, deepspeed, ...)."""
    from lmmops.vectors.train import DistillConfig  # torch: only for the tests that train vectors

    stage = tiny_config(method, train=train or {})
    keys = {"shots": stage.shots, "seed": stage.seed, "instruction": stage.instruction, "threads": stage.threads}
    return DistillConfig(train=stage.train, **{**keys, **fields})


def solid(color: str, size: int = 32) -> Image.Image:
    """A solid RGB image."""
    return Image.new("RGB", (size, size), color)


def icl_items(family: str) -> tuple[list[ICLItem], ICLItem]:
    """Two demonstrations and a query with answer, on 32x32 solid images (no images for text-only llama)."""
    from lmmops.models import ICLItem  # transformers (~3 s): only for the tests that build prompts

    def image(color: str) -> Image.Image | None:
        return None if family == "llama" else solid(color)

    demos = [
        ICLItem(image("red"), "What color is the shape?", "red"),
        ICLItem(image("blue"), "What color is this one?", "dark blue"),
    ]
    return demos, ICLItem(image("green"), "And the color here?", "green zebra")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def tiny_project(root: Path, *, model: bool = True, **generate: Any) -> Path:
    """Test-size generated data under `root/data` (`tiny_config("generate", **generate)`) and, with `model`, the
    test-size LLaVA of `tiny_config("bootstrap")` trained by the bootstrap code, saved to `root/model`. Returns
    `root`."""
    from lmmops.data import generate_all  # the data layer and torch: only for the tests that build a project
    from lmmops.models.bootstrap import train

    generate_all(tiny_config("generate", **generate), root=root, progress=False)
    if model:
        result = train(tiny_config("bootstrap"), root / "data", None, progress=False)
        result.model.save_pretrained(root / "model")
        result.processor.save_pretrained(root / "model")
    return root
