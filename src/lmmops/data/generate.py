"""generate_all: every synthetic dataset family written in its real format, atomically and deterministically.

    from lmmops.data.generate import generate_all
    summary = generate_all(GenerateConfig(), root=Path("."))   # writes ./data atomically

`generate_all` builds the whole tree in a temporary directory beside the target, writes a
`manifest.json` (the generator config without out_dir, counts, and the SHA-256 of every file), and
only then swaps it in place of `<root>/<cfg.out_dir>`: a failure leaves the old tree untouched and no
half-written files behind. Everything that was in the target directory before is replaced.

Determinism: every family draws from its own numpy Generator seeded with (cfg.seed, family offset,
split), the test splits with cfg.test_seed in place of cfg.seed (a test split no setting was chosen on;
train and val do not move when it changes); no global RNG, no timestamps, sorted JSON keys, fixed PNG
settings. The same config gives a byte-identical tree (tests/data/test_generators.py checks the MD5 of every file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmmops.config import GenerateConfig
from lmmops.data import layout
from lmmops.data.synthetic.deepscaler import generate_deepscaler
from lmmops.data.synthetic.diagrams import generate_multimodal, subset_plan
from lmmops.data.synthetic.io import write_json
from lmmops.data.synthetic.sokoban import generate_sokoban
from lmmops.data.synthetic.vqa import generate_vqa

__all__ = ["check_config", "generate_all"]


def check_config(cfg: GenerateConfig) -> None:
    """Reject configs the generators cannot honour, naming the key (before anything is written)."""
    problems = []
    counts = {
        "vqa.train": cfg.vqa.train, "vqa.val": cfg.vqa.val, "vqa.test": cfg.vqa.test,
        "deepscaler.train": cfg.deepscaler.train, "deepscaler.test": cfg.deepscaler.test,
        "sokoban.train": cfg.sokoban.train, "sokoban.test": cfg.sokoban.test,
        **{f"multimodal.{f.name}": getattr(cfg.multimodal, f.name)
           for f in dataclasses.fields(cfg.multimodal) if f.name != "image_size"},
    }
    problems += [f"{k} must be >= 0, got {v}" for k, v in counts.items() if v < 0]
    for key, share in (("vqa.icl_task_share", cfg.vqa.icl_task_share),
                       ("vqa.near_duplicate_share", cfg.vqa.near_duplicate_share),
                       ("multimodal.values_in_text_share", cfg.multimodal.values_in_text_share),
                       ("sokoban.board_in_text_share", cfg.sokoban.board_in_text_share)):
        if not 0.0 <= share <= 1.0:
            problems.append(f"{key} must be in [0, 1], got {share}")
    if cfg.vqa.image_size < 16:
        problems.append(f"vqa.image_size must be >= 16, got {cfg.vqa.image_size}")
    if cfg.multimodal.image_size < 32:
        problems.append(f"multimodal.image_size must be >= 32, got {cfg.multimodal.image_size}")
    if not cfg.sokoban.sizes or any(s < 5 for s in cfg.sokoban.sizes):
        problems.append(f"sokoban.sizes must be non-empty and >= 5, got {list(cfg.sokoban.sizes)}")
    for s in cfg.sokoban.sizes:
        for b in cfg.sokoban.num_boxes:
            if not 1 <= b <= (s - 2) ** 2 // 4:
                problems.append(f"sokoban.num_boxes {b} does not fit a {s} x {s} level")
    if not cfg.sokoban.num_boxes:
        problems.append("sokoban.num_boxes must not be empty")
    if cfg.sokoban.max_solution_length < 1:
        problems.append(f"sokoban.max_solution_length must be >= 1, got {cfg.sokoban.max_solution_length}")
    if cfg.sokoban.cell_pixels < 4:
        problems.append(f"sokoban.cell_pixels must be >= 4, got {cfg.sokoban.cell_pixels}")
    if problems:
        raise ValueError("invalid generate config: " + "; ".join(problems))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _bar(desc: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    bar = tqdm(total=total, desc=f"generate {desc}", unit="item", file=sys.stderr, disable=not enabled,
               mininterval=0.5, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def _write_tree(cfg: GenerateConfig, out: Path, progress: bool) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    with _bar("vqa", cfg.vqa.train + cfg.vqa.val + cfg.vqa.test, progress) as tick:
        counts["vqa"] = generate_vqa(cfg.vqa, cfg.seed, out, tick, test_seed=cfg.test_seed)
    with _bar("deepscaler", cfg.deepscaler.train + cfg.deepscaler.test, progress) as tick:
        counts["deepscaler"] = generate_deepscaler(cfg.deepscaler, cfg.seed, out, tick, test_seed=cfg.test_seed)
    with _bar("multimath+vermulti", sum(n for *_, n in subset_plan(cfg.multimodal)), progress) as tick:
        counts.update(generate_multimodal(cfg.multimodal, cfg.seed, out, tick, test_seed=cfg.test_seed))
    # Imported here: the Sokoban generator needs lmmops.rl (gymnasium), the other families do not.

    with _bar("sokoban", cfg.sokoban.train + cfg.sokoban.test, progress) as tick:
        counts["sokoban"] = generate_sokoban(cfg.sokoban, cfg.seed, out, tick, test_seed=cfg.test_seed)
    return counts


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace `target` by `tmp` with renames (same filesystem), restoring the old tree on failure."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def generate_all(cfg: GenerateConfig, root: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write every family under `root / cfg.out_dir` atomically; return counts and the file list.

    Returns {"out_dir": str, "counts": {"vqa": {"train": n, ...}, "deepscaler": {...}, "multimath":
    {...}, "vermulti_geo": {...}, "vermulti_perce_reason": {...}, "sokoban": {...}}, "totals":
    {"vqa_items", "deepscaler_items", "multimodal_items", "sokoban_levels", "files"}, "files": the
    number of files, "file_list": [paths relative to out_dir, sorted]}.
    """
    check_config(cfg)
    target = Path(root) / cfg.out_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the data tree is meant to be shared
        counts = _write_tree(cfg, tmp, progress)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        config = dataclasses.asdict(cfg)
        config.pop("out_dir")  # where the tree lives is not part of its content
        manifest = {
            "generator": "lmmops.data.synthetic",
            "synthetic": True,
            "config": config,
            "counts": counts,
            "files": {f: _sha256(tmp / f) for f in files},
        }
        write_json(tmp / layout.MANIFEST, manifest)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mm = sum(sum(counts[k].values()) for k in ("multimath", "vermulti_geo", "vermulti_perce_reason"))
    all_files = sorted([*files, layout.MANIFEST])
    return {
        "out_dir": str(target),
        "counts": counts,
        "totals": {
            "vqa_items": sum(counts["vqa"].values()),
            "deepscaler_items": sum(counts["deepscaler"].values()),
            "multimodal_items": mm,
            "sokoban_levels": sum(counts["sokoban"].values()),
            "files": len(all_files),
        },
        "files": len(all_files),
        "file_list": all_files,
    }
