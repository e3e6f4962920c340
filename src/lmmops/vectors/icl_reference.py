"""The k-shot ICL reference on the test split as a stored output: written by the `icl-reference` stage, read and
checked by `live` and `mimic`, so that the two stages' icl_acc/* are the same numbers by construction.

A reference directory (reports/icl_reference/, a DVC output) holds

    manifest.json        format, model_fingerprint (lmmops.vectors.train.model_fingerprint), shots, icl_draws,
                         seed, decoding {eval_batch_size, max_new_tokens, num_beams, answer_cut, instruction},
                         pools {pool: {path, test_items (question ids, in order), demo_items (the train items the
                         demos are drawn from)}}, extra (the writer's: model path, data version, device, threads)
    pools/<pool>.json    the pool's per-test-item scores (item_acc, the mean over the draws) and seconds (the best
                         generation time of the draws)

`write_icl_reference(...)` writes it into a temporary directory beside the target and renames it into place.
`read_icl_reference(directory)` reads it back; `IclReference.check(...)` / `.check_model(...)` raise
IclReferenceMismatch, naming the file and the field, when it was scored for other pools, test items, shots,
decoding or another base model: the fix is `dvc repro icl-reference`, never a silent rescoring.

Run: `python -m pytest tests/vectors/test_icl_reference.py -q`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmops.data.schemas import VQAItem
from lmmops.vectors.bundle import pool_dirnames
from lmmops.vectors.evaluation import IclScores
from lmmops.vectors.files import replacing_directory

ICL_REFERENCE_FORMAT = 1
MANIFEST = "manifest.json"
RERUN = "run `dvc repro icl-reference` with the params that live and mimic use (params.yaml section icl-reference)"


class IclReferenceMismatch(ValueError):
    """The stored ICL reference is not the one a stage evaluates against; the message names the file and field."""


def decoding_params(*, eval_batch_size: int, max_new_tokens: int, num_beams: int, answer_cut: Sequence[str],
                    instruction: str | None) -> dict[str, Any]:
    """The decoding a reference is scored under, as the manifest records it (and a reader compares it)."""
    return {"eval_batch_size": eval_batch_size, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
            "answer_cut": list(answer_cut), "instruction": instruction}


def write_icl_reference(
    directory: str | Path,
    scores: Mapping[str, IclScores],
    pools: Mapping[str, Mapping[str, Sequence[VQAItem]]],
    *,
    model_fingerprint: str,
    shots: int,
    draws: int,
    seed: int,
    decoding: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write every pool's reference and the manifest to `directory` (replacing it whole); returns the directory."""
    names = pool_dirnames(scores)
    with replacing_directory(out := Path(directory)) as tmp:
        entries: dict[str, dict[str, Any]] = {}
        (tmp / "pools").mkdir()
        for pool, s in scores.items():
            test = list(pools[pool]["test"])
            if len(s.item_acc) != len(test):
                raise ValueError(f"pool {pool!r}: {len(s.item_acc)} scores for {len(test)} test items")
            rel = f"pools/{names[pool]}.json"
            (tmp / rel).write_text(json.dumps({"pool": pool, "item_acc": [float(a) for a in s.item_acc],
                                               "seconds": float(s.seconds)}) + "\n")
            entries[pool] = {"path": rel, "test_items": [q.question_id for q in test],
                             "demo_items": [d.question_id for d in pools[pool]["train"]]}
        manifest = {"format": ICL_REFERENCE_FORMAT, "model_fingerprint": model_fingerprint, "shots": shots,
                    "icl_draws": draws, "seed": seed, "decoding": dict(decoding), "pools": entries,
                    "extra": dict(extra or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


@dataclass
class IclReference:
    """A stored reference: its manifest and {pool: IclScores}."""

    directory: Path
    manifest: dict[str, Any]
    scores: dict[str, IclScores]

    @property
    def draws(self) -> int:
        return int(self.manifest["icl_draws"])

    def _mismatch(self, field: str, recorded: Any, expected: Any, stage: str) -> IclReferenceMismatch:
        return IclReferenceMismatch(f"{self.directory / MANIFEST}: {field} is {recorded!r} there, {stage} evaluates "
                                    f"with {expected!r}; {RERUN}")

    def check(self, pools: Mapping[str, Mapping[str, Sequence[VQAItem]]], *, shots: int,
              decoding: Mapping[str, Any], stage: str) -> None:
        """Raise IclReferenceMismatch unless every pool of `pools` is in the reference with the same test items (in
        the same order) and demo items, scored `shots`-shot under the same `decoding` (`decoding_params`)."""
        if self.manifest["shots"] != shots:
            raise self._mismatch("shots", self.manifest["shots"], shots, stage)
        recorded = self.manifest["decoding"]
        for key, value in decoding.items():
            if recorded.get(key) != value:
                raise self._mismatch(f"decoding.{key}", recorded.get(key), value, stage)
        for pool, items in pools.items():
            entry = self.manifest["pools"].get(pool)
            if entry is None:
                raise IclReferenceMismatch(f"{self.directory / MANIFEST}: no pool {pool!r} (it has: "
                                           f"{', '.join(self.manifest['pools'])}), {stage} evaluates it; {RERUN}")
            for field, split in (("test_items", "test"), ("demo_items", "train")):
                ids = [q.question_id for q in items[split]]
                if entry[field] != ids:
                    first = next((i for i, (a, b) in enumerate(zip(entry[field], ids, strict=False)) if a != b),
                                 min(len(ids), len(entry[field])))
                    raise IclReferenceMismatch(
                        f"{self.directory / MANIFEST}: pools[{pool!r}].{field}: {len(entry[field])} question ids "
                        f"there, {stage}'s {split} split has {len(ids)}, first difference at position {first}; {RERUN}")

    def check_model(self, fingerprint: str, *, stage: str) -> None:
        """Raise IclReferenceMismatch unless the reference was scored with the base model of `fingerprint`."""
        if self.manifest["model_fingerprint"] != fingerprint:
            raise self._mismatch("model_fingerprint", self.manifest["model_fingerprint"], fingerprint, stage)


def read_icl_reference(directory: str | Path) -> IclReference:
    """The reference stored at `directory` (FileNotFoundError, naming the stage to run, when there is none)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no ICL reference at {directory} (missing {MANIFEST}); {RERUN}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != ICL_REFERENCE_FORMAT:
        raise IclReferenceMismatch(f"{path}: format is {manifest.get('format')!r} there, this lmmops reads "
                                   f"{ICL_REFERENCE_FORMAT}; {RERUN}")
    scores = {}
    for pool, entry in manifest["pools"].items():
        kept = json.loads((directory / entry["path"]).read_text())
        if len(kept["item_acc"]) != len(entry["test_items"]):
            raise IclReferenceMismatch(f"{directory / entry['path']}: {len(kept['item_acc'])} scores for "
                                       f"{len(entry['test_items'])} test items in {MANIFEST}; {RERUN}")
        scores[pool] = IclScores([float(a) for a in kept["item_acc"]], float(kept["seconds"]))
    return IclReference(directory, manifest, scores)
