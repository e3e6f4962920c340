"""Small helpers shared by test modules (import as `from testutil import git, tiny_project`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lmmops.config import BootstrapConfig

# A test-size LLaVA for the bootstrap code (2 steps: random-ish weights; the plumbing is what is tested).
TINY_MODEL = BootstrapConfig(text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=64,
                             vision_hidden=16, vision_layers=1, vision_heads=1, vision_intermediate=32, steps=2,
                             batch_size=4, max_shots=2, vqa_pack=2, extra_reasoning_rows=0, log_every=1)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def tiny_project(root: Path, *, vqa: tuple[int, int, int] = (60, 4, 16), model: bool = True) -> Path:
    """Test-size generated data under `root/data` (VQA train/val/test sizes `vqa`, one or a few rows of the
    other families) and, with `model`, a test-size LLaVA trained for 2 steps by the bootstrap code, saved to
    `root/model`. Returns `root`."""
    from lmmops.config import (
        GenerateConfig,
        MathGenConfig,
        MultimodalMathGenConfig,
        SokobanGenConfig,
        VQAGenConfig,
    )
    from lmmops.data import generate_all

    cfg = GenerateConfig(
        out_dir="data",
        vqa=VQAGenConfig(train=vqa[0], val=vqa[1], test=vqa[2]),
        deepscaler=MathGenConfig(train=4, test=2),
        multimodal=MultimodalMathGenConfig(multimath_train=1, multimath_test=1, geo_train=1, geo_test=1,
                                           perce_reason_train=1, perce_reason_test=1),
        sokoban=SokobanGenConfig(train=1, test=1, sizes=(6,), num_boxes=(1,)),
    )
    generate_all(cfg, root=root, progress=False)
    if model:
        from lmmops.models.bootstrap import train

        result = train(TINY_MODEL, root / "data", None, progress=False)
        result.model.save_pretrained(root / "model")
        result.processor.save_pretrained(root / "model")
    return root
