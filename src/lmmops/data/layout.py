"""Where each dataset family lives under the data directory: the one place that knows file names.

The generators write these paths and the loaders read them, so the two cannot drift apart. All paths
here are relative to the data directory (`data/` by default); image paths stored inside the files are
relative to it too, as POSIX strings.

    vqa/v2_OpenEnded_mscoco_{split}2014_questions.json     VQAv2 questions (OK-VQA: OpenEnded_mscoco_...)
    vqa/v2_mscoco_{split}2014_annotations.json             VQAv2 annotations (OK-VQA: mscoco_...)
    vqa/{split}2014/COCO_{split}2014_{image_id:012d}.png   images (.jpg accepted as in COCO)
    vqa/synthetic_scenes_{split}2014.json                  synthetic only: what each image shows
    deepscaler/{split}.jsonl                               problem, answer, solution (+ level)
    multimath/{split}.jsonl                                message, answer (+ id); images/{split}/
    vermulti/{geo,perce_reason}/{split}.jsonl              message, answer (+ id); images/{split}/
    sokoban/{split}.jsonl                                  id, grid, height, width, num_boxes, solution, image
    manifest.json                                          synthetic only: config, counts, file digests

Departure from the real VQAv2: the real test split (test2015) has no public annotations; the synthetic
tree has a labelled `test2014` split so that held-out evaluation runs offline.
"""

from __future__ import annotations

from pathlib import Path

VQA_DIR = "vqa"
DEEPSCALER_DIR = "deepscaler"
MULTIMATH_DIR = "multimath"
VERMULTI_DIR = "vermulti"
VERMULTI_SUBSETS = ("geo", "perce_reason")
SOKOBAN_DIR = "sokoban"
MANIFEST = "manifest.json"

# The five families; VerMulti's two subsets are validated together with a `subset` column.
FAMILIES = ("vqa", "deepscaler", "multimath", "vermulti", "sokoban")
VQA_SPLITS = ("train", "val", "test")
JSONL_SPLITS = ("train", "test")
VQA_YEAR = 2014


def vqa_subtype(split: str, year: int = VQA_YEAR) -> str:
    """'train' -> 'train2014' (the `data_subtype` of the real files and the image folder name)."""
    return f"{split}{year}"


def vqa_questions_file(split: str) -> str:
    return f"{VQA_DIR}/v2_OpenEnded_mscoco_{vqa_subtype(split)}_questions.json"


def vqa_annotations_file(split: str) -> str:
    return f"{VQA_DIR}/v2_mscoco_{vqa_subtype(split)}_annotations.json"


def vqa_scenes_file(split: str) -> str:
    return f"{VQA_DIR}/synthetic_scenes_{vqa_subtype(split)}.json"


def vqa_image_stem(subtype: str, image_id: int) -> str:
    """COCO naming: the image folder is the data_subtype, the file COCO_<subtype>_<12-digit id>."""
    return f"{VQA_DIR}/{subtype}/COCO_{subtype}_{image_id:012d}"


def jsonl_file(family_dir: str, split: str) -> str:
    return f"{family_dir}/{split}.jsonl"


def image_file(family_dir: str, split: str, item_id: str) -> str:
    return f"{family_dir}/images/{split}/{item_id}.png"


def multimodal_dir(family: str, subset: str | None) -> str:
    """'multimath' -> 'multimath'; ('vermulti', 'geo') -> 'vermulti/geo'."""
    if family == "multimath":
        return MULTIMATH_DIR
    if family == "vermulti" and subset in VERMULTI_SUBSETS:
        return f"{VERMULTI_DIR}/{subset}"
    raise ValueError(f"unknown multimodal family/subset {family!r}/{subset!r}")


def rel(path: Path, data_dir: Path) -> str:
    """`path` relative to the data directory as a POSIX string (absolute if outside it)."""
    try:
        return Path(path).relative_to(data_dir).as_posix()
    except ValueError:
        return Path(path).as_posix()
