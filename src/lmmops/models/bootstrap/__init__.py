"""The embedded default base model: a tiny LLaVA trained from scratch on the synthetic corpora.

What it does: builds a tiny `LlavaForConditionalGeneration` (CLIP vision tower -> MLP projector -> Llama
decoder) with a word-level tokenizer over the training texts, pre-tokenises the data layer's train split once
and trains on a mixture of rows, each kind a share of every batch:
- ICL episodes of the nine ICL task families (`max_shots` demonstrations + 1 query of one task, loss on every
  answer), with `long_icl_rows` 16-demo episodes in place of 8-demo ones, because the vector stages distil a
  16-shot teacher; their loss group weighs `icl_loss_weight` against each other group's 1;
- ordinary VQA questions, and "describe" rows: attribute questions about the single-object ICL images,
  labelled from the generator's scene sidecar (direct supervision of the vision path);
- DeepScaler reasoning traces `<think>...</think><answer>$\\boxed{...}$</answer>`, plus generated rows (test
  problems left out) weighted toward the arithmetic levels, and arithmetic drill rows (trace equations,
  loss on the results only);
- multimodal reasoning rows (MultiMath, VerMulti) with a short fixed trace, so that the format is also
  learned with an image present.
The shares and sizes were chosen on val or on an independently generated set, never on test
(docs/experiments.md). Modules: `corpus` (the corpora), `model` (architecture and processor), `batches`
(pre-tokenised rows and batches), `train` (loop, losses, checkpoints). The evaluations that run the model
live in `lmmops.evaluation`.

How to run: `lmmops bootstrap` (the stage in `lmmops.stages.models`), or from Python:
    result = train(BootstrapConfig(), Path("data"), Path("checkpoints/bootstrap"))
    evaluate_icl(result.model, result.processor, load_vqa(Path("data"), "test"))  # lmmops.evaluation.icl

Why LLaVA: the simplest image path of the covered families (4 image tokens per 32x32 image, no perceiver or
tiling), with an adapter for every later stage. The default size (Llama 4 layers x 128, CLIP 2 layers x 64,
~330 words) trains its ~1,400 steps on 2 CPU cores in minutes. The thread count alone changes float
reductions and so the training trajectory (README, "Reproducibility").

Departures from real LLaVA training: real LLaVA starts from pretrained CLIP and Llama weights and trains in
two phases (projector alignment, then instruction tuning); here everything is trained from scratch in one
phase on a few thousand synthetic items. The tokenizer is word-level (digits one by one, a number's first
digit keeping its space) instead of SentencePiece: answers are one or two tokens, so training is fast.
The image processor normalises with the training images' own mean and std instead of CLIP's
(`model.image_stats`). Rows are pre-tokenised for speed; `train` checks at start that their ids equal what
`LlavaAdapter.build_prompts` produces with the shared template of `lmmops.models.prompt`.
"""

from lmmops.models.bootstrap.model import build_model, build_processor, count_params
from lmmops.models.bootstrap.train import TrainResult, train

__all__ = ["TrainResult", "build_model", "build_processor", "count_params", "train"]
