"""Reasoning evaluation: greedy completions of DeepScaler problems, scored with the RL rewards of record.

`evaluate_reasoning(model, processor, rows)` prompts with the bootstrap's reasoning prompt
(`lmmops.models.bootstrap.corpus.reasoning_prompt`), decodes greedily (`generate_completions`) and reports the
format rate (`format_reward`) and math-verify accuracy (`verify_batch`), overall and per level. The verifier
runs in worker processes: a script that calls this needs an `if __name__ == "__main__":` guard.

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q -k stage` (through the bootstrap stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmmops.data.schemas import MathItem
from lmmops.eval.scoring import format_reward, verify_batch
from lmmops.models import non_text_token_ids
from lmmops.models.bootstrap.corpus import reasoning_prompt


@torch.no_grad()
def completion_ids(model: Any, processor: Any, prompts: Sequence[str], *, max_new_tokens: int = 96,
                   batch_size: int = 50, temperature: float | None = None, samples: int = 1,
                   images: Sequence[Image.Image] | None = None) -> list[torch.Tensor]:
    """The generated token ids of prompts (left padded; after the first stop id comes padding): greedy
    (`temperature` None) or `samples` per prompt sampled at `temperature`, prompt-major (prompt 0's samples first).
    With `images` (one per prompt, whose `<image>` placeholder the processor expands) the prompts are multimodal.

    Non-text special tokens (`non_text_token_ids`: `<image>`, padding, ...) are never generated, so a completion
    can be fed back with its prompt (an RL update) without an image placeholder that has no image."""
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    device = next(model.parameters()).device
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "num_return_sequences": samples}
    suppress = non_text_token_ids(tok, keep=[tok.eos_token_id])
    out: list[torch.Tensor] = []
    for b in range(0, len(prompts), batch_size):
        if images is None:
            enc = tok(list(prompts[b : b + batch_size]), padding=True, padding_side="left", return_tensors="pt")
        else:
            enc = processor(text=list(prompts[b : b + batch_size]), images=list(images[b : b + batch_size]),
                            padding=True, padding_side="left", return_tensors="pt")
        enc = enc.to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, suppress_tokens=suppress,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
        out += list(gen[:, enc["input_ids"].shape[1] :])
    return out


def generate_completions(model: Any, processor: Any, prompts: Sequence[str], *, max_new_tokens: int = 96,
                         batch_size: int = 50, temperature: float | None = None, samples: int = 1,
                         images: Sequence[Image.Image] | None = None) -> list[str]:
    """`completion_ids` decoded, special tokens removed."""
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    ids = completion_ids(model, processor, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         temperature=temperature, samples=samples, images=images)
    return tok.batch_decode(ids, skip_special_tokens=True)


def evaluate_reasoning(
    model: Any,
    processor: Any,
    rows: Sequence[MathItem],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 50,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Format rate and accuracy of greedy completions on DeepScaler rows, with the RL rewards of record.

    Returns reasoning_format_rate (`format_reward`), reasoning_accuracy (`verify_batch`, rows with an
    unparseable gold skipped) and reasoning_accuracy/level<n>. The caller needs an
    `if __name__ == "__main__":` guard when this runs in a script (the verifier uses worker processes).
    """
    completions = generate_completions(model, processor, [reasoning_prompt(r.problem) for r in rows],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    formats = [format_reward(c) for c in completions]
    accuracy = verify_batch(completions, [r.answer for r in rows])
    scored = [(r, a) for r, a in zip(rows, accuracy, strict=True) if a is not None]
    out = {
        "reasoning_format_rate": float(np.mean(formats)) if formats else 0.0,
        "reasoning_accuracy": float(np.mean([a for _, a in scored])) if scored else 0.0,
        "reasoning_rows": float(len(rows)),
    }
    for level in sorted({r.level for r, _ in scored if r.level is not None}):
        out[f"reasoning_accuracy/level{level}"] = float(np.mean([a for r, a in scored if r.level == level]))
    if samples_out is not None:
        samples_out += [{"problem": r.problem, "answer": r.answer, "completion": c, "format": f, "accuracy": a}
                        for r, c, f, a in list(zip(rows, completions, formats, accuracy, strict=True))[:20]]
    return out
