# Over 500 lines: one loader per public format (five families), sharing path resolution and row errors.
"""Loaders for the real public formats: typed records for the pipeline, DataFrames for validation.

    from lmmops.data.loaders import load_vqa, load_deepscaler, load_multimath, load_vermulti, load_sokoban
    items = load_vqa(Path("data"), "val")            # list[VQAItem]
    views = tabular_views(Path("data"))              # {"vqa": DataFrame, "deepscaler": ..., ...}

Two readings of the same files:
- `load_*` (strict): typed records; any missing or mistyped field raises DataError naming the file, the
  row (0-based index in that file), the item id and the field.
- `*_frame` / `tabular_views` (lenient): one DataFrame per family with all splits, used by Great
  Expectations and for MLflow dataset logging. A corrupt row never stops it: a missing field is a null,
  list fields are kept as JSON text, and every row carries `_file` and `_row` (VQA also `_ann_file`,
  `_ann_row` for its annotation) so that a failed expectation can be traced to its source. Only
  structurally broken JSON (a file that does not parse, a JSONL line that is not JSON) raises DataError.

Formats read (see lmmops.data.layout for the directory layout):
- VQA: VQAv2 / OK-VQA `*_{split}YYYY_questions.json` + `*_{split}YYYY_annotations.json`, images
  `{data_subtype}/COCO_{data_subtype}_{image_id:012d}.{png,jpg}` beside them.
- DeepScaleR: `{split}.jsonl` (or a `{split}.json` list, as the released deepscaler.json) with problem,
  answer, solution.
- MultiMath / VerMulti: `{split}.jsonl` rows with `message` (a JSON string or a list: OpenAI-style chat
  whose image items are {"type": "image", "image": path} or {"type": "image_url", "image_url": {"url":
  path}}) and `answer`. An image path may be absolute, `file://`, relative to the data directory or
  relative to the JSONL file's directory (tried in that order).
- Sokoban: `{split}.jsonl` rows with id, grid (XSB rows), height, width, num_boxes, solution, image.

All reads are read-only; nothing here writes to the data directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from lmmops.data import layout
from lmmops.data.schemas import (
    DataError,
    MathItem,
    MultimodalItem,
    SokobanItem,
    VQAAnswer,
    VQAItem,
)
from lmmops.data.synthetic.scenes import Scene

__all__ = [
    "VQA_COLUMNS",
    "available_splits",
    "deepscaler_frame",
    "load_deepscaler",
    "load_multimath",
    "load_sokoban",
    "load_vermulti",
    "load_vqa",
    "load_vqa_scenes",
    "message_images",
    "message_text",
    "multimath_frame",
    "parse_message",
    "read_records",
    "resolve_image",
    "sokoban_frame",
    "tabular_view",
    "tabular_views",
    "vermulti_frame",
    "vqa_files",
    "vqa_frame",
]


# ----------------------------------------------------------------------------------------------------
# raw reading


def _rel(path: Path, data_dir: Path) -> str:
    return layout.rel(path, data_dir)


def read_json(path: Path, data_dir: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(_rel(path, data_dir), "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(_rel(path, data_dir), f"not valid JSON: {exc}") from None


def read_records(path: Path, data_dir: Path) -> list[Any]:
    """The rows of a `.jsonl` file (blank lines skipped) or of a `.json` file holding a list."""
    if path.suffix == ".json":
        data = read_json(path, data_dir)
        if not isinstance(data, list):
            raise DataError(_rel(path, data_dir), f"expected a JSON list of rows, got {type(data).__name__}")
        return data
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(_rel(path, data_dir), "file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(_rel(path, data_dir), f"not UTF-8 text: {exc}") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(_rel(path, data_dir), f"line {line_no} is not valid JSON: {exc}",
                            row=len(rows)) from None
    return rows


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def _json_text(value: Any) -> str | None:
    """Lists and dicts as JSON text (the tabular view holds scalars only); None stays None."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    # object dtype: values keep their Python types, so GE's type expectations check each value and a
    # missing field stays None (pandas would otherwise coerce ints with nulls to floats, str to "str").
    return pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in columns})


# ----------------------------------------------------------------------------------------------------
# discovery


_Q_RE = re.compile(r"(?:^|_)([a-z]+)(\d{4})_questions\.json$")


def vqa_files(data_dir: Path) -> dict[str, tuple[Path, Path | None]]:
    """{split: (questions file, annotations file or None)} found in data_dir/vqa."""
    vqa_dir = Path(data_dir) / layout.VQA_DIR
    found: dict[str, tuple[Path, Path | None]] = {}
    for q in sorted(vqa_dir.glob("*_questions.json")):
        m = _Q_RE.search(q.name)
        if not m:
            continue
        split, subtype = m.group(1), m.group(1) + m.group(2)
        if split in found:
            raise DataError(_rel(q, data_dir), f"a second questions file for split {split!r} "
                            f"(also {_rel(found[split][0], data_dir)}); keep one dataset per directory")
        anns = sorted(vqa_dir.glob(f"*{subtype}_annotations.json"))
        if len(anns) > 1:
            raise DataError(_rel(anns[1], data_dir), f"more than one annotations file for {subtype}")
        found[split] = (q, anns[0] if anns else None)
    return found


def _jsonl_files(family_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(family_dir.glob("*.json*")):
        if p.suffix in (".jsonl", ".json") and p.is_file():
            files.setdefault(p.stem, p)  # {split}.jsonl wins over {split}.json
    return files


def available_splits(data_dir: Path, family: str) -> dict[str, list[str]]:
    """{subset: [splits]} present on disk for `family` (subset "" for families without subsets)."""
    data_dir = Path(data_dir)
    if family == "vqa":
        return {"": sorted(vqa_files(data_dir))} if (data_dir / layout.VQA_DIR).is_dir() else {}
    if family == "vermulti":
        return {s: sorted(_jsonl_files(data_dir / layout.VERMULTI_DIR / s)) for s in layout.VERMULTI_SUBSETS
                if (data_dir / layout.VERMULTI_DIR / s).is_dir()}
    dirs = {"deepscaler": layout.DEEPSCALER_DIR, "multimath": layout.MULTIMATH_DIR, "sokoban": layout.SOKOBAN_DIR}
    if family not in dirs:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(layout.FAMILIES)}")
    d = data_dir / dirs[family]
    return {"": sorted(_jsonl_files(d))} if d.is_dir() else {}


def _split_file(data_dir: Path, family_dir: str, split: str) -> Path:
    files = _jsonl_files(Path(data_dir) / family_dir)
    if split not in files:
        raise DataError(f"{family_dir}/{split}.jsonl", "file not found")
    return files[split]


# ----------------------------------------------------------------------------------------------------
# images and messages


def resolve_image(ref: str, data_dir: Path, base_dir: Path | None = None) -> Path:
    """An image reference from a data file as a path: absolute / file:// as is, else relative to the data
    directory, else relative to `base_dir` (the file's directory) when it exists only there."""
    ref = ref[len("file://"):] if ref.startswith("file://") else ref
    p = Path(ref)
    if p.is_absolute():
        return p
    first = Path(data_dir) / p
    if not first.exists() and base_dir is not None and (Path(base_dir) / p).exists():
        return Path(base_dir) / p
    return first


def parse_message(value: Any) -> list[dict[str, Any]] | None:
    """A chat message (JSON string or list of turns) as a list of turns, or None if malformed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str | list):
            return None
    return value


def _items(message: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for turn in message:
        content = turn.get("content")
        if isinstance(content, list):
            yield from (c for c in content if isinstance(c, dict))


def message_images(message: list[dict[str, Any]]) -> list[str]:
    refs = []
    for item in _items(message):
        if item.get("type") == "image" and isinstance(item.get("image"), str):
            refs.append(item["image"])
        elif item.get("type") == "image_url":
            url = item.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str):
                refs.append(url)
    return refs


def message_text(message: list[dict[str, Any]]) -> str:
    parts = []
    for turn in message:
        if turn.get("role", "user") != "user":
            continue
        content = turn.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------
# VQA


VQA_COLUMNS = [
    "split", "id", "question_id", "image_id", "question", "question_type", "answer_type",
    "multiple_choice_answer", "answers", "n_answers", "ann_image_id", "near_duplicate_of", "image",
    "has_question", "has_annotation", "_file", "_row", "_ann_file", "_ann_row",
]
# Which file each VQA column comes from ("q" questions, "a" annotations): failures name that file.
VQA_FIELD_SOURCE: dict[str, str] = {
    "question_id": "q", "image_id": "q", "question": "q", "image": "q", "has_annotation": "q",
    "question_type": "a", "answer_type": "a", "multiple_choice_answer": "a", "answers": "a",
    "n_answers": "a", "ann_image_id": "a", "near_duplicate_of": "a", "has_question": "a",
}


def _vqa_image(data_dir: Path, vqa_dir: Path, subtype: str, image_id: Any) -> str | None:
    """The image of `image_id` (relative to data_dir): the .png or .jpg that exists, else a pattern."""
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return None
    stem = vqa_dir / subtype / f"COCO_{subtype}_{image_id:012d}"
    for ext in (".png", ".jpg", ".jpeg"):
        if stem.with_suffix(ext).exists():
            return _rel(stem.with_suffix(ext), data_dir)
    return _rel(stem, data_dir) + ".(png|jpg)"


def _vqa_raw(data_dir: Path, split: str) -> tuple[list[dict[str, Any]], Path, Path | None]:
    """Questions outer-joined with annotations on question_id, one dict per row of the tabular view."""
    data_dir = Path(data_dir)
    files = vqa_files(data_dir)
    if split not in files:
        raise DataError(layout.vqa_questions_file(split), "file not found (no *_<split>YYYY_questions.json)")
    q_path, a_path = files[split]
    q_data = read_json(q_path, data_dir)
    if not isinstance(q_data, dict) or not isinstance(q_data.get("questions"), list):
        raise DataError(_rel(q_path, data_dir), "expected an object with a 'questions' list")
    subtype = q_data.get("data_subtype")
    if not isinstance(subtype, str):
        subtype = _Q_RE.search(q_path.name).group(1) + _Q_RE.search(q_path.name).group(2)  # type: ignore[union-attr]
    annotations: list[Any] = []
    if a_path is not None:
        a_data = read_json(a_path, data_dir)
        if not isinstance(a_data, dict) or not isinstance(a_data.get("annotations"), list):
            raise DataError(_rel(a_path, data_dir), "expected an object with an 'annotations' list")
        annotations = a_data["annotations"]
    q_file = _rel(q_path, data_dir)
    a_file = _rel(a_path, data_dir) if a_path is not None else layout.vqa_annotations_file(split)
    by_qid: dict[Any, tuple[int, Any]] = {}
    for j, ann in enumerate(annotations):
        qid = _get(ann, "question_id")
        if isinstance(qid, int | str) and qid not in by_qid:
            by_qid[qid] = (j, ann)
    rows, matched = [], set()
    for i, q in enumerate(q_data["questions"]):
        qid = _get(q, "question_id")
        j, ann = by_qid.get(qid, (None, None)) if isinstance(qid, int | str) else (None, None)
        if j is not None:
            matched.add(j)
        rows.append(_vqa_row(data_dir, q_path.parent, subtype, split, q, ann, q_file, i, a_file, j))
    for j, ann in enumerate(annotations):
        if j not in matched:  # an annotation without a question (or a duplicate question_id)
            rows.append(_vqa_row(data_dir, q_path.parent, subtype, split, None, ann, q_file, None, a_file, j))
    return rows, q_path, a_path


def _vqa_row(data_dir: Path, vqa_dir: Path, subtype: str, split: str, q: Any, ann: Any, q_file: str,
             q_row: int | None, a_file: str, a_row: int | None) -> dict[str, Any]:
    qid = _get(q, "question_id") if q is not None else _get(ann, "question_id")
    answers = _get(ann, "answers")
    image_id = _get(q, "image_id")
    return {
        "split": split,
        "id": str(qid) if qid is not None else None,
        "question_id": _get(q, "question_id"),
        "image_id": image_id,
        "question": _get(q, "question"),
        "question_type": _get(ann, "question_type"),
        "answer_type": _get(ann, "answer_type"),
        "multiple_choice_answer": _get(ann, "multiple_choice_answer"),
        "answers": _json_text(answers),
        "n_answers": len(answers) if isinstance(answers, list) else None,
        "ann_image_id": _get(ann, "image_id"),
        "near_duplicate_of": _get(ann, "near_duplicate_of"),
        "image": _vqa_image(data_dir, vqa_dir, subtype, image_id),
        "has_question": q is not None,
        "has_annotation": ann is not None,
        "_file": q_file,
        "_row": q_row,
        "_ann_file": a_file,
        "_ann_row": a_row,
        "_raw_answers": answers,  # kept for load_vqa, dropped from the frame
    }


def vqa_frame(data_dir: Path, splits: Iterable[str] | None = None) -> pd.DataFrame:
    """The tabular view of the VQA family: one row per question (outer join with the annotations)."""
    splits = list(splits) if splits is not None else sorted(vqa_files(Path(data_dir)))
    records = [r for s in splits for r in _vqa_raw(Path(data_dir), s)[0]]
    return _frame(records, VQA_COLUMNS)


def _need(row: dict[str, Any], key: str, types: type | tuple[type, ...], file_key: str = "_file",
          row_key: str = "_row", value: Any = None) -> Any:
    v = row.get(key) if value is None else value
    if v is None:
        raise DataError(row[file_key], "missing or null", row=row[row_key], item_id=row.get("id"), field=key)
    if not isinstance(v, types) or (isinstance(v, bool) and types is not bool):
        raise DataError(row[file_key], f"expected {getattr(types, '__name__', types)}, got {type(v).__name__}",
                        row=row[row_key], item_id=row.get("id"), field=key)
    return v


def load_vqa(data_dir: Path, split: str) -> list[VQAItem]:
    """Typed VQA items of `split` (strict: the first problem raises DataError)."""
    data_dir = Path(data_dir)
    rows, _, _ = _vqa_raw(data_dir, split)
    items = []
    for r in rows:
        if not r["has_question"]:
            raise DataError(r["_ann_file"], "annotation without a question", row=r["_ann_row"],
                            item_id=r["id"], field="question_id")
        if not r["has_annotation"]:
            raise DataError(r["_file"], "question without an annotation", row=r["_row"], item_id=r["id"],
                            field="question_id")
        a = {"file_key": "_ann_file", "row_key": "_ann_row"}
        raw_answers = _need(r, "answers", list, **a, value=r["_raw_answers"])
        answers = []
        for k, ans in enumerate(raw_answers):
            if not isinstance(ans, dict) or not isinstance(ans.get("answer"), str):
                raise DataError(r["_ann_file"], f"answer {k} is not an object with a string 'answer'",
                                row=r["_ann_row"], item_id=r["id"], field="answers")
            answers.append(VQAAnswer(ans["answer"], str(ans.get("answer_confidence", "yes")),
                                     int(ans.get("answer_id", k + 1))))
        image = r["image"]
        if image is None or image.endswith(".(png|jpg)"):
            raise DataError(r["_file"], f"image file not found: {image}", row=r["_row"], item_id=r["id"],
                            field="image_id")
        items.append(VQAItem(
            question_id=_need(r, "question_id", int),
            image_id=_need(r, "image_id", int),
            question=_need(r, "question", str),
            question_type=_need(r, "question_type", str, **a),
            answer_type=_need(r, "answer_type", str, **a),
            multiple_choice_answer=_need(r, "multiple_choice_answer", str, **a),
            answers=tuple(answers),
            image_path=data_dir / image,
            split=split,
            near_duplicate_of=r["near_duplicate_of"] if isinstance(r["near_duplicate_of"], int) else None,
        ))
    return items


def load_vqa_scenes(data_dir: Path, split: str) -> dict[int, Any]:
    """Synthetic only: {image_id: Scene} from the scenes sidecar (what each generated image shows)."""

    path = Path(data_dir) / layout.vqa_scenes_file(split)
    data = read_json(path, Path(data_dir))
    return {s["image_id"]: Scene.from_json(s) for s in data["scenes"]}


# ----------------------------------------------------------------------------------------------------
# JSONL families


def _row_id(raw: Any, file: str, row: int) -> str:
    rid = _get(raw, "id")
    return str(rid) if isinstance(rid, str | int) and not isinstance(rid, bool) else f"{file}:{row}"


DEEPSCALER_COLUMNS = ["split", "id", "problem", "answer", "solution", "level", "_file", "_row"]


def _deepscaler_records(data_dir: Path, split: str, path: Path) -> list[dict[str, Any]]:
    file = _rel(path, data_dir)
    return [{"split": split, "id": _row_id(raw, file, i), "problem": _get(raw, "problem"),
             "answer": _get(raw, "answer"), "solution": _get(raw, "solution"), "level": _get(raw, "level"),
             "_file": file, "_row": i} for i, raw in enumerate(read_records(path, data_dir))]


def deepscaler_frame(data_dir: Path, splits: Iterable[str] | None = None) -> pd.DataFrame:
    data_dir = Path(data_dir)
    files = _jsonl_files(data_dir / layout.DEEPSCALER_DIR)
    records = [r for s in (splits or sorted(files)) for r in
               _deepscaler_records(data_dir, s, _split_file(data_dir, layout.DEEPSCALER_DIR, s))]
    return _frame(records, DEEPSCALER_COLUMNS)


def load_deepscaler(data_dir: Path, split: str) -> list[MathItem]:
    data_dir = Path(data_dir)
    rows = _deepscaler_records(data_dir, split, _split_file(data_dir, layout.DEEPSCALER_DIR, split))
    items = []
    for r in rows:
        level = r["level"]
        if level is not None:
            level = _need(r, "level", int)
        solution = r["solution"]
        if solution is not None:
            solution = _need(r, "solution", str)
        items.append(MathItem(r["id"], _need(r, "problem", str), _need(r, "answer", str), solution, level, split))
    return items


MULTIMODAL_COLUMNS = ["split", "subset", "id", "message", "answer", "question", "images", "n_images",
                      "_file", "_row"]


def _multimodal_records(data_dir: Path, subset: str, split: str, path: Path) -> list[dict[str, Any]]:
    file = _rel(path, data_dir)
    records = []
    for i, raw in enumerate(read_records(path, data_dir)):
        raw_message = _get(raw, "message")
        message = parse_message(raw_message)
        images = [_rel(resolve_image(ref, data_dir, path.parent), data_dir) for ref in message_images(message)] \
            if message is not None else None
        records.append({
            "split": split, "subset": subset, "id": _row_id(raw, file, i),
            "message": _json_text(raw_message), "answer": _get(raw, "answer"),
            "question": message_text(message) if message is not None else None,
            "images": _json_text(images), "n_images": len(images) if images is not None else None,
            "_file": file, "_row": i, "_message": message,
        })
    return records


def _multimodal_frame(data_dir: Path, parts: list[tuple[str, str, str]]) -> pd.DataFrame:
    records = [r for subset, fam_dir, split in parts
               for r in _multimodal_records(Path(data_dir), subset, split, _split_file(data_dir, fam_dir, split))]
    return _frame(records, MULTIMODAL_COLUMNS)


def multimath_frame(data_dir: Path, splits: Iterable[str] | None = None) -> pd.DataFrame:
    data_dir = Path(data_dir)
    splits = splits or sorted(_jsonl_files(data_dir / layout.MULTIMATH_DIR))
    return _multimodal_frame(data_dir, [("multimath", layout.MULTIMATH_DIR, s) for s in splits])


def vermulti_frame(data_dir: Path, subsets: Iterable[str] | None = None) -> pd.DataFrame:
    data_dir = Path(data_dir)
    parts = []
    for subset in subsets or layout.VERMULTI_SUBSETS:
        fam_dir = layout.multimodal_dir("vermulti", subset)
        parts += [(subset, fam_dir, s) for s in sorted(_jsonl_files(data_dir / fam_dir))]
    return _multimodal_frame(data_dir, parts)


def _load_multimodal(data_dir: Path, subset: str, fam_dir: str, split: str) -> list[MultimodalItem]:
    data_dir = Path(data_dir)
    path = _split_file(data_dir, fam_dir, split)
    items = []
    for r in _multimodal_records(data_dir, subset, split, path):
        _need(r, "message", str)
        if r["_message"] is None:
            raise DataError(r["_file"], "not an OpenAI-style chat list", row=r["_row"], item_id=r["id"],
                            field="message")
        images = tuple(data_dir / p for p in json.loads(r["images"]))
        items.append(MultimodalItem(r["id"], subset, split, tuple(r["_message"]), images, r["question"],
                                    _need(r, "answer", str)))
    return items


def load_multimath(data_dir: Path, split: str) -> list[MultimodalItem]:
    return _load_multimodal(data_dir, "multimath", layout.MULTIMATH_DIR, split)


def load_vermulti(data_dir: Path, subset: str, split: str) -> list[MultimodalItem]:
    """`subset`: "geo" (VerMulti-Geo) or "perce_reason" (VerMulti PerceReason)."""
    return _load_multimodal(data_dir, subset, layout.multimodal_dir("vermulti", subset), split)


SOKOBAN_COLUMNS = ["split", "id", "grid", "height", "width", "num_boxes", "solution", "image", "_file", "_row"]


def _sokoban_records(data_dir: Path, split: str, path: Path) -> list[dict[str, Any]]:
    file = _rel(path, data_dir)
    records = []
    for i, raw in enumerate(read_records(path, data_dir)):
        image = _get(raw, "image")
        records.append({
            "split": split, "id": _row_id(raw, file, i), "grid": _json_text(_get(raw, "grid")),
            "height": _get(raw, "height"), "width": _get(raw, "width"), "num_boxes": _get(raw, "num_boxes"),
            "solution": _json_text(_get(raw, "solution")),
            "image": _rel(resolve_image(image, data_dir, path.parent), data_dir) if isinstance(image, str) else image,
            "_file": file, "_row": i, "_raw": raw,
        })
    return records


def sokoban_frame(data_dir: Path, splits: Iterable[str] | None = None) -> pd.DataFrame:
    data_dir = Path(data_dir)
    splits = splits or sorted(_jsonl_files(data_dir / layout.SOKOBAN_DIR))
    records = [r for s in splits for r in _sokoban_records(data_dir, s, _split_file(data_dir, layout.SOKOBAN_DIR, s))]
    return _frame(records, SOKOBAN_COLUMNS)


def _str_list(r: dict[str, Any], key: str) -> tuple[str, ...]:
    v = _need(r, key, list, value=r["_raw"].get(key) if isinstance(r["_raw"], dict) else None)
    if not all(isinstance(x, str) for x in v):
        raise DataError(r["_file"], "expected a list of strings", row=r["_row"], item_id=r["id"], field=key)
    return tuple(v)


def load_sokoban(data_dir: Path, split: str) -> list[SokobanItem]:
    data_dir = Path(data_dir)
    items = []
    for r in _sokoban_records(data_dir, split, _split_file(data_dir, layout.SOKOBAN_DIR, split)):
        message = parse_message(r["_raw"].get("message")) if isinstance(r["_raw"], dict) else None
        items.append(SokobanItem(
            id=r["id"], grid=_str_list(r, "grid"), height=_need(r, "height", int), width=_need(r, "width", int),
            num_boxes=_need(r, "num_boxes", int), solution=_str_list(r, "solution"),
            image_path=data_dir / _need(r, "image", str), split=split,
            message=tuple(message) if message is not None else None,
        ))
    return items


# ----------------------------------------------------------------------------------------------------
# all families


def tabular_view(data_dir: Path, family: str) -> pd.DataFrame:
    """One DataFrame for `family` with all its splits (and subsets), for validation and MLflow logging.

    Columns starting with "_" locate each row in its file; drop them before logging if you like.
    """
    frames = {"vqa": vqa_frame, "deepscaler": deepscaler_frame, "multimath": multimath_frame,
              "vermulti": vermulti_frame, "sokoban": sokoban_frame}
    if family not in frames:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(layout.FAMILIES)}")
    return frames[family](Path(data_dir))


def tabular_views(data_dir: Path, families: Iterable[str] = layout.FAMILIES) -> dict[str, pd.DataFrame]:
    """{family: tabular view} for the families present under data_dir."""
    return {f: tabular_view(data_dir, f) for f in families if available_splits(Path(data_dir), f)}
