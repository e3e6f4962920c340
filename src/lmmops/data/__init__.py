"""The data layer: the five dataset families in their real public formats, synthetic generators that write
those same formats, loaders, and Great Expectations validation.

Run (the `generate` and `validate` stages call exactly these):

    from lmmops.data import generate_all, validate_all
    summary = generate_all(GenerateConfig(), root=Path("."))   # writes ./data atomically, deterministic
    report = validate_all(ValidateConfig(), root=Path("."))    # read-only; report.success, report.format()

Layout of data/ (paths inside files are relative to data/; see lmmops.data.layout):

    data/
      manifest.json                                   synthetic only: config, counts, SHA-256 per file
      vqa/                                            VQAv2 / OK-VQA layout
        v2_OpenEnded_mscoco_{train,val,test}2014_questions.json   {"info", "license", "data_subtype",
                                                      "data_type", "task_type", "questions": [{image_id,
                                                      question, question_id}]}
        v2_mscoco_{train,val,test}2014_annotations.json           {"info", "license", "data_subtype",
                                                      "data_type", "annotations": [{question_id, image_id,
                                                      question_type, answer_type, multiple_choice_answer,
                                                      answers: [{answer, answer_confidence, answer_id}] x 10,
                                                      near_duplicate_of (synthetic, optional)}]}
        {train,val,test}2014/COCO_{split}2014_{image_id:012d}.png      images (.jpg read too)
        synthetic_scenes_{split}2014.json             synthetic only: what each image shows
      deepscaler/{train,test}.jsonl                   {problem, answer (LaTeX), solution, level}
      multimath/{train,test}.jsonl                    {id, message, answer}; images in multimath/images/
      vermulti/geo/{train,test}.jsonl                 {id, message, answer}; images in vermulti/geo/images/
      vermulti/perce_reason/{train,test}.jsonl        same, VerMulti perception + reasoning subset
      sokoban/{train,test}.jsonl                      {id, grid, height, width, num_boxes, solution, image,
                                                      message}; images in sokoban/images/

`message` is a JSON string of an OpenAI-style chat: [{"role": "user", "content": [{"type": "image",
"image": "vermulti/geo/images/train/geo-train-00000.png"}, {"type": "text", "text": "..."}]}]; `answer`
is boxed: "$\\boxed{60}$", "$\\boxed{B}$".

The families (synthetic content in brackets; module docstrings say where each departs from the real set):
- VQA (VQAv2, OK-VQA) [rendered shapes/digits, 6 ordinary question types with 10 disagreeing annotators,
  9 ICL task families only identifiable from demonstrations (lmmops.data.icl_tasks), near-duplicates of
  train items in val/test];
- DeepScaler (stage-1 text RL) [arithmetic and algebra word problems, levels 1-5, worked solutions in the
  <think>/<answer> format];
- MultiMath and VerMulti (Geo, PerceReason) [rendered geometry diagrams, counting and reading problems;
  some multiple choice];
- Sokoban [reverse-play levels with shortest solutions, rendered].

Dropping in real data: put the files in the layout above (only the names matter; OK-VQA's
`OpenEnded_mscoco_*_questions.json` / `mscoco_*_annotations.json` are found too; COCO images go to
vqa/<data_subtype>/; DeepScaleR's deepscaler.json may be renamed train.json; VerMulti image paths may be
absolute, file://, relative to data/ or to the JSONL file). Do not run `generate` afterwards: it replaces
the whole data directory. Then run `validate`. Real VQAv2 has no labelled test split: put a held-out
part of val under the test name.
"""

from __future__ import annotations

from lmmops.data.generate import generate_all
from lmmops.data.icl_tasks import (
    ICL_QUESTION,
    ICL_TASK_NAMES,
    ICL_TASKS,
    ICL_VOCABULARY,
    ICLTask,
    get_icl_task,
    group_by_task,
    is_icl_task,
    render_icl_image,
    tasks_sharing_vocabulary,
)
from lmmops.data.loaders import (
    available_splits,
    load_deepscaler,
    load_multimath,
    load_sokoban,
    load_vermulti,
    load_vqa,
    load_vqa_scenes,
    tabular_view,
    tabular_views,
)
from lmmops.data.schemas import DataError, MathItem, MultimodalItem, SokobanItem, VQAAnswer, VQAItem
from lmmops.data.validation import Failure, ValidationReport, validate_all

__all__ = [
    "ICL_QUESTION",
    "ICL_TASKS",
    "ICL_TASK_NAMES",
    "ICL_VOCABULARY",
    "DataError",
    "Failure",
    "ICLTask",
    "MathItem",
    "MultimodalItem",
    "SokobanItem",
    "VQAAnswer",
    "VQAItem",
    "ValidationReport",
    "available_splits",
    "generate_all",
    "get_icl_task",
    "group_by_task",
    "is_icl_task",
    "load_deepscaler",
    "load_multimath",
    "load_sokoban",
    "load_vermulti",
    "load_vqa",
    "load_vqa_scenes",
    "render_icl_image",
    "tabular_view",
    "tabular_views",
    "tasks_sharing_vocabulary",
    "validate_all",
]
