"""The default base model's architecture and processor: a tiny `LlavaForConditionalGeneration` and its
`LlavaProcessor` (a word-level tokenizer over the training texts + a 32 px CLIP image processor).

Run: `.venv/bin/python -m pytest tests/models/test_bootstrap.py -q`.

Departures from LLaVA: every weight starts random (no pretrained CLIP or Llama); the tokenizer is word-level
(digits one by one) instead of SentencePiece, so answers are one or two tokens and unseen words are `<unk>`;
the image processor normalises with the training images' own mean and std instead of CLIP's (`image_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from lmmops.config import BootstrapConfig
from lmmops.models.bootstrap.corpus import open_image
from lmmops.models.tokenizer import build_word_tokenizer

IMAGE_SIZE = 32
PATCH = 16
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def image_stats(paths: Sequence[Path], limit: int = 500) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to `limit` of) the training images, in [0, 1].

    Why: the synthetic images are mostly bright background. With CLIP's web-image statistics every pixel
    value sits near +1.7 and the shape is a small deviation, so the vision features are dominated by the
    background and the decoder needs hundreds of steps to start reading them (a colour-only probe stayed
    at ln 4 for 120 steps); normalised with the data's own statistics (as CLIP was with its own data) the
    same probe learns colour in about 50 steps.
    """
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(limit, len(paths))).astype(int)] if paths else []
    if not picks:
        return [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    pixels = np.concatenate([np.asarray(open_image(p).resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float64).reshape(-1, 3)
                             for p in picks]) / 255.0
    return [round(float(v), 4) for v in pixels.mean(0)], [round(float(v), 4) for v in pixels.std(0)]


def build_processor(
    corpus: Sequence[str], image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None
) -> LlavaProcessor:
    """Word-level tokenizer over `corpus` + CLIP image processor (32 px; mean/std of the data when given)."""
    tok = build_word_tokenizer(
        SPECIALS, corpus, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos=True
    )
    stats = {"image_mean": list(image_mean), "image_std": list(image_std)} if image_mean and image_std else {}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **stats
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )


def build_model(cfg: BootstrapConfig, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    tok = processor.tokenizer
    config = LlavaConfig(
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": cfg.text_hidden,
            "intermediate_size": cfg.text_intermediate,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads,
            "num_key_value_heads": cfg.text_kv_heads,
            "max_position_embeddings": 1024,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": cfg.vision_hidden,
            "intermediate_size": cfg.vision_intermediate,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": cfg.vision_heads,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
