# Over 500 lines: one Great Expectations suite per family and the one report that names file, row and field.
"""Great Expectations suites, one per dataset family, over the loaders' tabular views.

    from lmmops.data import validate_all
    report = validate_all(ValidateConfig(), root=Path("."))
    print(report.format())
    if not report.success: ...   # report.failures name file, row (0-based, and the item id), field

How it works: `loaders.tabular_view` reads each family leniently (a missing field is a null); checks
that need Python (the image file exists and decodes, the answer parses with math-verify, the Sokoban
solution solves the level by `lmmops.eval.sokoban.step`, ...) are precomputed into boolean columns; then
one ExpectationSuite per family runs on an ephemeral GX context (pandas data source -> dataframe asset ->
whole-dataframe batch definition -> ValidationDefinition.run(batch_parameters={"dataframe": df})).
Every unexpected row is mapped back to its file and row through the view's `_file` / `_row` columns
(VQA annotation fields through `_ann_file` / `_ann_row`). A file that is not valid JSON, a missing
family (one of cfg.families) or a missing split is reported as a failure too, without a suite.

Cross-split duplicates (lmmops.data.duplicates): after the suites, every held-out item of multimath, VerMulti
(geo, perce_reason) or Sokoban that repeats a train item (same text and image pixels, Sokoban the same board; or
a question text whose every train item has its answer) is a failure naming its file, row, id and the train item it
repeats; the counts go to `report.statistics["duplicates"]` ({"duplicates/<kind>/<domain>/<split>": n}).

Math answers are checked with the reward's own code path (`lmmops.eval.scoring.verify_batch`, gold = the
answer, prediction = the same answer): a gold the reward would skip fails validation; one that parses
but does not verify against itself is only counted (`answers_not_self_verifying`: usually a timeout).

Read-only: nothing under the data directory is created, modified or deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from lmmops.config import ValidateConfig
from lmmops.data import layout
from lmmops.data.duplicates import counts, duplicate_pairs
from lmmops.data.loaders import VQA_FIELD_SOURCE, available_splits, parse_message, tabular_view
from lmmops.data.schemas import DataError
from lmmops.eval.scoring import verify_batch
from lmmops.eval.sokoban import ACTIONS, Level, step

__all__ = ["Failure", "ValidationReport", "validate_all", "validate_family"]

log = logging.getLogger(__name__)

REQUIRED_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "vqa": {"": layout.VQA_SPLITS},
    "deepscaler": {"": layout.JSONL_SPLITS},
    "multimath": {"": layout.JSONL_SPLITS},
    "vermulti": {s: layout.JSONL_SPLITS for s in layout.VERMULTI_SUBSETS},
    "sokoban": {"": layout.JSONL_SPLITS},
}
CONFIDENCES = {"yes", "maybe", "no"}
# The duplicate check's domains and the family whose files hold each one.
DUPLICATE_DOMAINS = {"multimath": "multimath", "geo": "vermulti", "perce_reason": "vermulti", "sokoban": "sokoban"}
DUPLICATES = "duplicates"  # the statistics entry of the duplicate counts: not a family
DUPLICATE_EXPECTATIONS = {
    "same_item": "no held-out item repeats a train item (same question text and image)",
    "same_text_answer": "no held-out item repeats a train item "
                        "(its question text alone gives the answer train teaches)",
}


@dataclass(frozen=True)
class Failure:
    """One problem: where it is (file, row, item id, field) and which expectation it broke."""

    family: str
    file: str | None
    row: int | None
    item_id: str | None
    field: str | None
    expectation: str
    detail: str = ""

    def format(self) -> str:
        where = self.file or "(no file)"
        if self.row is not None:
            where += f" row {self.row}"
        if self.item_id is not None:
            where += f" (id {self.item_id})"
        if self.field is not None:
            where += f" field {self.field!r}"
        return f"{where}: {self.expectation}" + (f": {self.detail}" if self.detail else "")


@dataclass
class ValidationReport:
    success: bool
    data_dir: str
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)  # per family
    failures: list[Failure] = field(default_factory=list)

    @property
    def rows_checked(self) -> int:
        return sum(int(s.get("rows", 0)) for s in self.statistics.values())

    @property
    def rows(self) -> int:  # the name the validate stage reads
        return self.rows_checked

    def format(self, max_failures: int = 50) -> str:
        lines = [f"validation of {self.data_dir}: {'PASSED' if self.success else 'FAILED'} "
                 f"({self.rows_checked} rows, {len(self.failures)} failures)"]
        for fam, stats in self.statistics.items():
            if fam == DUPLICATES:
                found = ", ".join(f"{k.removeprefix('duplicates/')}={int(v)}" for k, v in stats.items())
                lines.append(f"  held-out items that repeat a train item: {found or 'none checked'}")
                continue
            ge = stats.get("expectations", {})
            extra = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("rows", "expectations", "splits"))
            lines.append(f"  {fam}: {stats.get('rows', 0)} rows {stats.get('splits', {})}; expectations "
                         f"{ge.get('successful', 0)}/{ge.get('evaluated', 0)} passed" + (f"; {extra}" if extra else ""))
        if self.failures:
            lines.append("failures:")
            lines += [f"  [{f.family}] {f.format()}" for f in self.failures[:max_failures]]
            if len(self.failures) > max_failures:
                lines.append(f"  ... and {len(self.failures) - max_failures} more")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the stage's metrics: success (1/0), failures, rows_checked."""
        return {"success": float(self.success), "failures": float(len(self.failures)),
                "rows_checked": float(self.rows_checked)}

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "data_dir": self.data_dir, "statistics": self.statistics,
                "failures": [f.__dict__ for f in self.failures]}


# ----------------------------------------------------------------------------------------------------
# precomputed checks (boolean columns + a reason per failing row)


@dataclass
class Derived:
    """Boolean check columns added to a view, with why each failing row failed."""

    reasons: dict[tuple[str, int], str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def column(self, df: pd.DataFrame, name: str, fn: Callable[[pd.Series], tuple[bool, str | None]]) -> None:
        values = []
        for idx, row in df.iterrows():
            ok, why = fn(row)
            values.append(bool(ok))
            if not ok and why:
                self.reasons[(name, idx)] = why
        df[name] = pd.Series(values, index=df.index, dtype=bool)


class ImageChecker:
    """Does an image file exist (and decode)? Cached: VQA images are shared by several questions."""

    def __init__(self, data_dir: Path, decode: bool):
        self.data_dir, self.decode = data_dir, decode
        self.cache: dict[str, tuple[bool, str | None]] = {}

    def __call__(self, rel: Any) -> tuple[bool, str | None]:
        if not isinstance(rel, str):
            return False, "no image path"
        if rel not in self.cache:
            self.cache[rel] = self._check(rel)
        return self.cache[rel]

    def _check(self, rel: str) -> tuple[bool, str | None]:
        path = Path(rel) if Path(rel).is_absolute() else self.data_dir / rel
        if not path.is_file():
            return False, f"image file not found: {rel}"
        if self.decode:
            try:
                with Image.open(path) as im:
                    im.load()  # full decode: catches truncated files, not only bad headers
            except Exception as exc:  # PIL raises many types for corrupt files
                return False, f"image does not decode: {rel}: {exc}"
        return True, None


def _answer_results(answers: list[str], timeout_s: float) -> dict[str, float | None]:
    """{answer: 1.0 / 0.0 / None} as the reward sees the answer as both gold and prediction."""
    unique = sorted(set(answers))
    if not unique:
        return {}
    try:
        results = verify_batch([f"<think></think><answer>{a}</answer>" for a in unique], unique,
                               timeout_s=timeout_s)
    except RuntimeError as exc:
        # The reward's worker pool could not start (e.g. a script without a __main__ guard under
        # forkserver/spawn): parse in this process instead.
        log.warning("math-verify worker pool unavailable (%s); parsing answers in-process", exc)
        return {a: _parse_fallback(a, timeout_s) for a in unique}
    return dict(zip(unique, results, strict=True))


def _parse_fallback(answer: str, timeout_s: float) -> float | None:
    from math_verify import parse

    # math-verify's timeout uses signal.alarm, which only works in the main thread.
    timeout = max(1, int(timeout_s)) if threading.current_thread() is threading.main_thread() else None
    letter = re.fullmatch(r"\s*\(?([A-E])\)?\.?\s*", answer)  # a bare choice letter, as the reward reads it
    if letter:
        text = f"\\boxed{{{letter.group(1)}}}"
    elif any(t in answer for t in ("$", "\\boxed", "\\(")):
        text = answer
    else:
        text = f"${answer}$"
    try:
        parsed = parse(text, parsing_timeout=timeout)
    except Exception:
        return None
    return 1.0 if any(not isinstance(p, str) for p in parsed) else None


def _math_column(d: Derived, df: pd.DataFrame, cfg: ValidateConfig) -> None:
    answers = [a for a in df["answer"] if isinstance(a, str)]
    results = _answer_results(answers, cfg.answer_parse_timeout_s)
    d.stats["answers_not_self_verifying"] = sum(1 for a in answers if results.get(a) == 0.0)

    def check(row: pd.Series) -> tuple[bool, str | None]:
        a = row["answer"]
        if not isinstance(a, str):
            return True, None  # null / type failures are reported by their own expectations
        if results.get(a) is None:
            return False, f"math-verify cannot parse {a!r} (the reward would skip this row)"
        return True, None

    d.column(df, "answer_parses", check)


def _json(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        return None


def derive_vqa(df: pd.DataFrame, data_dir: Path, cfg: ValidateConfig) -> Derived:
    d = Derived()
    images = ImageChecker(data_dir, cfg.decode_images)

    def wellformed(row: pd.Series) -> tuple[bool, str | None]:
        answers = _json(row["answers"])
        if answers is None:
            return True, None  # reported as null
        if not isinstance(answers, list):
            return False, "not a list"
        for k, a in enumerate(answers):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                return False, f"answer {k} has no string 'answer'"
            if a.get("answer_confidence") not in CONFIDENCES:
                return False, f"answer {k}: answer_confidence {a.get('answer_confidence')!r} not yes/maybe/no"
            if not isinstance(a.get("answer_id"), int):
                return False, f"answer {k}: answer_id is not an integer"
        return True, None

    def mc_in_answers(row: pd.Series) -> tuple[bool, str | None]:
        answers, mc = _json(row["answers"]), row["multiple_choice_answer"]
        if not isinstance(answers, list) or not isinstance(mc, str):
            return True, None
        ok = mc in [a.get("answer") for a in answers if isinstance(a, dict)]
        return ok, None if ok else f"{mc!r} is not among the annotator answers"

    def image_ids_match(row: pd.Series) -> tuple[bool, str | None]:
        q, a = row["image_id"], row["ann_image_id"]
        if q is None or a is None or not row["has_question"] or not row["has_annotation"]:
            return True, None
        return q == a, None if q == a else f"annotation says image {a}, question says {q}"

    def image_ok(row: pd.Series) -> tuple[bool, str | None]:
        if not row["has_question"] or row["image_id"] is None:
            return True, None
        return images(row["image"])

    d.column(df, "answers_wellformed", wellformed)
    d.column(df, "mc_answer_in_answers", mc_in_answers)
    d.column(df, "image_id_matches", image_ids_match)
    d.column(df, "image_ok", image_ok)
    qt = df["question_type"].dropna().astype(str)
    d.stats.update({
        "icl_items": int(qt.str.startswith("icl/").sum()),
        "icl_tasks": int(qt[qt.str.startswith("icl/")].nunique()),
        "near_duplicates": int(df["near_duplicate_of"].notna().sum()),
    })
    return d


def derive_math(df: pd.DataFrame, data_dir: Path, cfg: ValidateConfig) -> Derived:
    d = Derived()
    _math_column(d, df, cfg)
    levels = Counter(v for v in df["level"] if isinstance(v, int))
    if levels:
        d.stats["levels"] = {str(k): levels[k] for k in sorted(levels)}
    return d


def derive_multimodal(df: pd.DataFrame, data_dir: Path, cfg: ValidateConfig) -> Derived:
    d = Derived()
    images = ImageChecker(data_dir, cfg.decode_images)

    def message_ok(row: pd.Series) -> tuple[bool, str | None]:
        if row["message"] is None:
            return True, None
        if parse_message(row["message"]) is None:
            return False, "not an OpenAI-style chat list (JSON string or list of {role, content})"
        if not row["n_images"]:
            return False, "the message has no image item"
        return True, None

    def image_ok(row: pd.Series) -> tuple[bool, str | None]:
        refs = _json(row["images"])
        if not refs:
            return True, None  # reported by message_ok
        for ref in refs:
            ok, why = images(ref)
            if not ok:
                return ok, why
        return True, None

    d.column(df, "message_ok", message_ok)
    d.column(df, "image_ok", image_ok)
    _math_column(d, df, cfg)
    if "subset" in df and df["subset"].nunique() > 1:
        d.stats["subsets"] = {str(k): int(v) for k, v in sorted(Counter(df["subset"]).items())}
    return d


def _grid(row: pd.Series) -> list[str] | None:
    grid = _json(row["grid"])
    return grid if isinstance(grid, list) and grid and all(isinstance(r, str) for r in grid) else None


def derive_sokoban(df: pd.DataFrame, data_dir: Path, cfg: ValidateConfig) -> Derived:
    d = Derived()
    images = ImageChecker(data_dir, cfg.decode_images)

    def grid_ok(row: pd.Series) -> tuple[bool, str | None]:
        if row["grid"] is None:
            return True, None
        grid = _grid(row)
        if grid is None:
            return False, "not a non-empty list of XSB row strings"
        bad = sorted({ch for r in grid for ch in r} - set("#@+$*. -_"))
        if bad:
            return False, f"characters outside XSB: {bad}"
        players = sum(r.count("@") + r.count("+") for r in grid)
        if players != 1:
            return False, f"{players} players (need exactly 1)"
        if isinstance(row["height"], int) and row["height"] != len(grid):
            return False, f"height {row['height']} but {len(grid)} rows"
        if isinstance(row["width"], int) and row["width"] != max(len(r) for r in grid):
            return False, f"width {row['width']} but the widest row has {max(len(r) for r in grid)} cells"
        return True, None

    def boxes_match(row: pd.Series) -> tuple[bool, str | None]:
        grid = _grid(row)
        if grid is None:
            return True, None
        boxes = sum(r.count("$") + r.count("*") for r in grid)
        targets = sum(r.count(".") + r.count("*") + r.count("+") for r in grid)
        if boxes != targets or boxes == 0:
            return False, f"{boxes} boxes but {targets} targets"
        if isinstance(row["num_boxes"], int) and row["num_boxes"] != boxes:
            return False, f"num_boxes says {row['num_boxes']} but the grid has {boxes}"
        return True, None

    def solution_solves(row: pd.Series) -> tuple[bool, str | None]:
        grid, solution = _grid(row), _json(row["solution"])
        if grid is None or row["solution"] is None:
            return True, None  # reported by grid_ok / not null
        if not isinstance(solution, list) or not all(isinstance(a, str) and a.lower() in ACTIONS for a in solution):
            return False, "not a list of up/down/left/right"
        try:
            level = Level.from_xsb("\n".join(grid))
        except ValueError as exc:
            return False, f"level does not load: {exc}"
        for action in solution:
            level, _, solved = step(level, action.lower())
            if solved:
                return True, None
        return False, f"the {len(solution)} stored moves leave boxes off their targets"

    d.column(df, "grid_ok", grid_ok)
    d.column(df, "boxes_match_targets", boxes_match)
    d.column(df, "solution_solves", solution_solves)
    d.column(df, "image_ok", lambda row: images(row["image"]) if row["image"] is not None else (True, None))
    lengths = [len(s) for s in map(_json, df["solution"]) if isinstance(s, list)]
    if lengths:
        d.stats["mean_solution_length"] = round(sum(lengths) / len(lengths), 2)
    return d


# ----------------------------------------------------------------------------------------------------
# suites


@dataclass(frozen=True)
class Check:
    kind: str  # not_null | type | unique | in_set | true | min
    column: str
    arg: Any = None
    field: str | None = None  # the data field a failure is about (default: the column)
    text: str = ""  # human description for the report


def _checks(required: dict[str, str], unique: list[str], sets: dict[str, list[Any]],
            flags: dict[str, tuple[str, str]], minimums: dict[str, int] | None = None) -> list[Check]:
    checks = [Check("not_null", c, text="required field present and not null") for c in required]
    checks += [Check("type", c, t, text=f"value is of type {t}") for c, t in required.items()]
    checks += [Check("unique", c, text="value is unique") for c in unique]
    checks += [Check("in_set", c, v, text=f"value in {v}") for c, v in sets.items()]
    checks += [Check("true", c, field=f, text=t) for c, (f, t) in flags.items()]
    checks += [Check("min", c, v, text=f"value >= {v}") for c, v in (minimums or {}).items()]
    return checks


def _suite_checks(family: str) -> list[Check]:
    if family == "vqa":
        return [
            *_checks(
                required={"question_id": "int", "image_id": "int", "question": "str", "question_type": "str",
                          "answer_type": "str", "multiple_choice_answer": "str", "answers": "str"},
                unique=["question_id"],
                sets={"answer_type": ["yes/no", "number", "other"]},
                flags={
                    "has_annotation": ("question_id", "the question has an annotation"),
                    "has_question": ("question_id", "the annotation has a question"),
                    "answers_wellformed": ("answers", "answers are {answer, answer_confidence, answer_id} objects"),
                    "mc_answer_in_answers": ("multiple_choice_answer",
                                             "multiple_choice_answer is one of the annotator answers"),
                    "image_id_matches": ("image_id", "annotation and question name the same image"),
                    "image_ok": ("image_id", "image file exists and decodes"),
                },
            ),
            Check("in_set", "n_answers", [10], field="answers", text="exactly 10 annotator answers"),
        ]
    if family == "deepscaler":
        return [
            *_checks(required={"problem": "str", "answer": "str"}, unique=[], sets={},
                     flags={"answer_parses": ("answer", "answer parses with math-verify")}),
            Check("type", "solution", "str", text="value is of type str"),
            Check("type", "level", "int", text="value is of type int"),
        ]
    if family in ("multimath", "vermulti"):
        return _checks(
            required={"message": "str", "answer": "str"},
            unique=["id"], sets={},
            flags={"message_ok": ("message", "message is a chat list with an image item"),
                   "image_ok": ("message", "every image file exists and decodes"),
                   "answer_parses": ("answer", "answer parses with math-verify")},
        )
    if family == "sokoban":
        return _checks(
            required={"id": "str", "grid": "str", "height": "int", "width": "int", "num_boxes": "int",
                      "solution": "str", "image": "str"},
            unique=["id"], sets={},
            flags={"grid_ok": ("grid", "grid is XSB rows with one player, matching height/width"),
                   "boxes_match_targets": ("grid", "as many boxes as targets (and as num_boxes)"),
                   "solution_solves": ("solution", "the stored solution, replayed move by move, solves the level"),
                   "image_ok": ("image", "image file exists and decodes")},
            minimums={"height": 3, "width": 3, "num_boxes": 1},
        )
    raise ValueError(f"unknown family {family!r}")


# grid and solution are lists in the files but JSON text in the view: their type is checked by the flags.
_TEXT_OF_LIST = {("sokoban", "grid"), ("sokoban", "solution"), ("vqa", "answers")}


def _expectation(check: Check) -> Any:
    import great_expectations.expectations as gxe

    if check.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=check.column)
    if check.kind == "type":
        return gxe.ExpectColumnValuesToBeInTypeList(column=check.column, type_list=[check.arg])
    if check.kind == "unique":
        return gxe.ExpectColumnValuesToBeUnique(column=check.column)
    if check.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=check.column, value_set=check.arg)
    if check.kind == "true":
        return gxe.ExpectColumnValuesToBeInSet(column=check.column, value_set=[True])
    if check.kind == "min":
        return gxe.ExpectColumnValuesToBeBetween(column=check.column, min_value=check.arg)
    raise ValueError(check.kind)


class _GX:
    """One ephemeral GX context per validate_all call; one suite and validation definition per family."""

    def __init__(self) -> None:
        import great_expectations as gx  # before _quiet(): it quiets the GX loggers that exist

        self.gx = gx
        with _quiet():
            self.context = gx.get_context(mode="ephemeral")
            try:
                from great_expectations.data_context.types.base import ProgressBarsConfig

                self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            except ImportError:  # pragma: no cover - older/newer GX layout
                self.context.variables.progress_bars = {"globally": False, "metric_calculations": False}
            self.source = self.context.data_sources.add_pandas("lmmops_data")

    def run(self, family: str, df: pd.DataFrame, checks: list[Check]) -> list[tuple[Check, Any]]:
        """Each check with its GX result (GX does not keep the suite's order in its results)."""
        gx = self.gx
        with _quiet():
            asset = self.source.add_dataframe_asset(name=family)
            batch = asset.add_batch_definition_whole_dataframe(f"{family}_all")
            suite = self.context.suites.add(gx.ExpectationSuite(name=f"lmmops_{family}"))
            by_id = {}
            for check in checks:
                by_id[suite.add_expectation(_expectation(check)).id] = check
            vd = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=f"lmmops_{family}_validation", data=batch, suite=suite))
            result = vd.run(batch_parameters={"dataframe": df}, result_format={"result_format": "COMPLETE"})
        pairs = [(by_id[r.expectation_config.id], r) for r in result.results]
        if len(pairs) != len(checks):  # pragma: no cover - a GX change we must notice
            raise RuntimeError(f"GX returned {len(pairs)} results for {len(checks)} expectations")
        return pairs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """GX logs and warns a lot at INFO/WARNING level (ephemeral context, pandas dtypes): keep it quiet.
    Some GX modules set their own logger level, so every GX logger is raised, not only the parent."""
    names = ["great_expectations", *(n for n in logging.root.manager.loggerDict if n.startswith("great_expectations."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


DERIVE: dict[str, Callable[[pd.DataFrame, Path, ValidateConfig], Derived]] = {
    "vqa": derive_vqa,
    "deepscaler": derive_math,
    "multimath": derive_multimodal,
    "vermulti": derive_multimodal,
    "sokoban": derive_sokoban,
}


def _locate(family: str, df: pd.DataFrame, idx: Any, check: Check) -> tuple[str | None, int | None, str | None]:
    """(file, row in that file, item id) of view row `idx` for a failure of `check`."""
    row = df.loc[idx]
    source = VQA_FIELD_SOURCE.get(check.column) or VQA_FIELD_SOURCE.get(check.field or "")
    if family == "vqa" and source == "a":
        file, r = row["_ann_file"], row["_ann_row"]
    else:
        file, r = row["_file"], row["_row"]
    item_id = row["id"] if isinstance(row["id"], str) else None
    return file, int(r) if r is not None and not pd.isna(r) else None, item_id


def _one_sided(df: pd.DataFrame, idx: Any, check: Check) -> bool:
    """A VQA check about the side of the question/annotation join that this row lacks."""
    source = VQA_FIELD_SOURCE.get(check.column) or VQA_FIELD_SOURCE.get(check.field or "")
    return (source == "q" and not df.at[idx, "has_question"]) or (source == "a" and not df.at[idx, "has_annotation"])


def validate_family(family: str, df: pd.DataFrame, data_dir: Path, cfg: ValidateConfig,
                    gx_runner: _GX | None = None) -> tuple[list[Failure], dict[str, Any]]:
    """Run the family's suite on its tabular view; returns failures and statistics."""
    df = df.copy().reset_index(drop=True)  # the caller's frame is left as it was
    derived = DERIVE[family](df, data_dir, cfg)
    checks = [c for c in _suite_checks(family) if not (c.kind == "type" and (family, c.column) in _TEXT_OF_LIST)]
    results = (gx_runner or _GX()).run(family, df, checks)
    failures: list[Failure] = []
    for check, res in results:
        if res.success:
            continue
        fld = check.field or check.column
        info = res.exception_info or {}
        if info.get("raised_exception"):
            failures.append(Failure(family, None, None, None, fld, f"{check.text} [{res.expectation_config.type}]",
                                    f"expectation raised: {info.get('exception_message')}"))
            continue
        for idx in res.result.get("unexpected_index_list") or []:
            if family == "vqa" and _one_sided(df, idx, check):
                continue  # reported once as "has no question" / "has no annotation"
            file, r, item_id = _locate(family, df, idx, check)
            detail = derived.reasons.get((check.column, idx), "")
            if not detail and check.kind not in ("not_null", "true"):
                detail = f"value {df.at[idx, check.column]!r}"
            failures.append(Failure(family, file, r, item_id, fld,
                                    f"{check.text} [{res.expectation_config.type}]", detail))
    stats: dict[str, Any] = {
        "rows": len(df),
        "splits": {str(k): int(v) for k, v in sorted(Counter(df["split"]).items())},
        "expectations": {"evaluated": len(results), "successful": sum(1 for _, r in results if r.success)},
        **derived.stats,
    }
    failures.sort(key=lambda f: (f.file or "", f.row if f.row is not None else -1, f.field or ""))
    return failures, stats


def validate_all(cfg: ValidateConfig, root: Path) -> ValidationReport:
    """Validate every family of cfg.families under root / cfg.data_dir (read-only)."""
    data_dir = Path(root) / cfg.data_dir
    unknown = [f for f in cfg.families if f not in layout.FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; families: {', '.join(layout.FAMILIES)}")
    report = ValidationReport(success=True, data_dir=str(cfg.data_dir))  # as configured: no machine paths
    if not data_dir.is_dir():
        report.failures.append(Failure("*", str(data_dir), None, None, None, "data directory exists"))
        report.success = False
        return report
    gx_runner: _GX | None = None
    views: dict[str, pd.DataFrame] = {}
    for family in cfg.families:
        try:
            present = available_splits(data_dir, family)
        except DataError as exc:
            report.failures.append(Failure(family, exc.file, exc.row, None, exc.field, "files are unambiguous",
                                           exc.message))
            continue
        missing = [(sub, s) for sub, splits in REQUIRED_SPLITS[family].items() for s in splits
                   if s not in present.get(sub, [])]
        for sub, s in missing:
            where = _expected_file(family, sub, s)
            report.failures.append(Failure(family, where, None, None, None, "split present", "file not found"))
        if not present or not any(present.values()):
            continue
        try:
            df = tabular_view(data_dir, family)
        except DataError as exc:
            report.failures.append(Failure(family, exc.file, exc.row, None, exc.field, "file parses (JSON structure)",
                                           exc.message))
            continue
        if gx_runner is None:
            gx_runner = _GX()
        failures, stats = validate_family(family, df, data_dir, cfg, gx_runner)
        report.failures += failures
        report.statistics[family] = stats
        views[family] = df
    domains = [d for d, family in DUPLICATE_DOMAINS.items() if family in views]
    if domains:
        duplicates, failures = _duplicate_failures(data_dir, domains, views)
        report.failures += failures
        report.statistics[DUPLICATES] = counts(duplicates)
    report.success = not report.failures
    return report


def _duplicate_failures(data_dir: Path, domains: list[str], views: dict[str, pd.DataFrame]
                        ) -> tuple[dict[tuple[str, str, str], list[tuple[str, str]]], list[Failure]]:
    """(duplicate_pairs of `domains`, one Failure per held-out item that repeats a train item, located by the
    family's view). A domain whose files the strict loaders cannot read is skipped: its suite reports why."""
    found: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for domain in domains:
        try:
            found.update(duplicate_pairs(data_dir, [domain]))
        except (ValueError, OSError) as exc:  # DataError is a ValueError; an image that does not open an OSError
            log.warning("duplicates of %s not checked: %s", domain, exc)
    where: dict[tuple[str, str, str], tuple[str, int]] = {}
    for family, df in views.items():
        subsets = df["subset"] if "subset" in df else pd.Series(family, index=df.index)
        for subset, split, item_id, file, row in zip(subsets, df["split"], df["id"], df["_file"], df["_row"],
                                                     strict=True):
            where.setdefault((subset, split, item_id), (file, int(row)))
    failures = []
    for (kind, domain, split), pairs in found.items():
        family = DUPLICATE_DOMAINS[domain]
        for item_id, train_id in pairs:
            file, row = where.get((domain, split, item_id), (None, None))
            if domain == "sokoban":
                expectation, fld = "no held-out level repeats a train level (same board)", "grid"
                detail = f"the board of train level {train_id}"
            else:
                expectation, fld = DUPLICATE_EXPECTATIONS[kind], "message"
                detail = (f"repeats train item {train_id}" if kind == "same_item" else
                          f"the question text of train item {train_id}, whose answer it has")
            failures.append(Failure(family, file, row, item_id, fld, expectation, detail))
    failures.sort(key=lambda f: (f.family, f.file or "", f.row if f.row is not None else -1, f.expectation))
    return found, failures


def _expected_file(family: str, subset: str, split: str) -> str:
    if family == "vqa":
        return layout.vqa_questions_file(split)
    if family == "vermulti":
        return layout.jsonl_file(layout.multimodal_dir("vermulti", subset), split)
    dirs = {"deepscaler": layout.DEEPSCALER_DIR, "multimath": layout.MULTIMATH_DIR, "sokoban": layout.SOKOBAN_DIR}
    return layout.jsonl_file(dirs[family], split)
