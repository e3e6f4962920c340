"""Tiny, randomly initialised models of the real LMM families, with processors built locally.

`build_tiny(family)` returns `(model, processor)` where the model is the real transformers class of that
family (IdeficsForVisionText2Text, Idefics2ForConditionalGeneration, Idefics3ForConditionalGeneration,
LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
LlamaForCausalLM) with a config of a few layers and hidden size 64, and the processor is the family's
real processor class over a small byte-level BPE tokenizer (`tokenizer.build_tokenizer`) that carries the
family's special tokens, plus the family's PIL image processor at a small image size. Nothing touches the
hub. Used by unit tests of every later stage and as the starting point of the project's own base model.

Run: `python -c "from lmmops.models import build_tiny; print(build_tiny('qwen2_vl')[0])"`.

Departures from the real checkpoints (on purpose, to stay tiny): vision tiles are 32x32 (the idefics3
processor resizes every image to 64 px and splits it into 2x2 tiles plus a global view, to exercise the
tiling path real Idefics3 checkpoints use), the vocabulary is a few hundred tokens, and a vision tower has
1-2 layers. Idefics v1 uses its perceiver resampler (4 latents) like idefics-9b, and has no GQA (its
attention class has none); the llama-based families (idefics3, llava, llama), idefics2 (Mistral) and the
Qwen families use num_kv_heads < num_heads so head-level code meets GQA. Text layers of Idefics v1 are not frozen
(`freeze_text_layers=False`), unlike the reference config: freezing is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    CLIPImageProcessorPil,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessorPil,
    Idefics2Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    IdeficsConfig,
    IdeficsForVisionText2Text,
    IdeficsImageProcessorPil,
    IdeficsProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from lmmops.models.processors import qwen_processor
from lmmops.models.tokenizer import build_tokenizer

FAMILIES: tuple[str, ...] = ("idefics", "idefics2", "idefics3", "llava", "qwen2_vl", "qwen2_5_vl", "llama")

# Shared text-model shape: 2 layers, hidden 64, 4 heads of 16, 2 KV heads (GQA) where the class allows it.
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
IMAGE_SIZE = 32  # pixels of a vision tile

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
IDEFICS_IMAGE_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
IDEFICS3_EXTRA_SPECIALS = ["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


# Image placeholder tokens the language model sees per 32x32 input image (`<image>` / `<|image_pad|>`;
# Idefics v1 has one `<image>` token per image and cross-attends to 4 perceiver latents).
TINY_IMAGE_TOKENS: dict[str, int] = {
    "idefics": 1,
    "idefics2": 4,  # perceiver latents, between two <fake_token_around_image>
    "idefics3": 20,  # 2x2 tiles + global view, 4 tokens each (resized to 64 px; pixel shuffle 2)
    "llava": 4,  # 2x2 CLIP patches of 16 px, CLS dropped
    "qwen2_vl": 4,  # 4x4 patches of 8 px merged 2x2
    "qwen2_5_vl": 4,
    "llama": 0,
}


def _llama_tokenizer(extra: list[str]) -> PreTrainedTokenizerFast:
    return build_tokenizer(
        LLAMA_SPECIALS + extra, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos=True
    )


def _text_kwargs(tok: PreTrainedTokenizerFast, **extra: Any) -> dict[str, Any]:
    """Llama/Mistral-style text config of the shared tiny shape."""
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 1024,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        **extra,
    }


def _tiny_idefics() -> tuple[Any, ProcessorMixin]:
    tok = _llama_tokenizer(IDEFICS_IMAGE_SPECIALS)
    image_processor = IdeficsImageProcessorPil(image_size=IMAGE_SIZE)
    processor = IdeficsProcessor(image_processor=image_processor, tokenizer=tok)
    config = IdeficsConfig(
        vocab_size=len(tok),
        additional_vocab_size=0,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        cross_layer_interval=1,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        freeze_text_layers=False,
        freeze_vision_layers=False,
        use_resampler=True,
        vision_config={
            "embed_dim": 32,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        perceiver_config={
            "use_resampler": True,
            "resampler_n_latents": 4,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 16,
        },
    )
    return config, processor


def _tiny_idefics2() -> tuple[Any, ProcessorMixin]:
    tok = _llama_tokenizer(IDEFICS_IMAGE_SPECIALS)
    n_latents = 4
    image_processor = Idefics2ImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}, do_image_splitting=False
    )
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_latents)
    config = Idefics2Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        text_config={"model_type": "mistral", **_text_kwargs(tok, sliding_window=None)},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        perceiver_config={
            "hidden_size": HIDDEN,
            "resampler_n_latents": n_latents,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 16,
            "num_key_value_heads": 1,
        },
    )
    return config, processor


def _tiny_idefics3() -> tuple[Any, ProcessorMixin]:
    tok = _llama_tokenizer(IDEFICS_IMAGE_SPECIALS + IDEFICS3_EXTRA_SPECIALS)
    patch, scale = 8, 2
    image_seq_len = (IMAGE_SIZE // patch) ** 2 // scale**2  # 4
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len)
    config = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
        text_config={"model_type": "llama", **_text_kwargs(tok)},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": patch,
        },
    )
    return config, processor


def _tiny_llava() -> tuple[Any, ProcessorMixin]:
    tok = _llama_tokenizer(["<image>"])
    patch = 16
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )
    config = LlavaConfig(
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        text_config={"model_type": "llama", **_text_kwargs(tok)},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": patch,
            "projection_dim": 32,
        },
    )
    return config, processor


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos=False)


def _qwen_text(tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 1024,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        # M-RoPE: (temporal, height, width) sections of the rotary half-dimension.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "max_window_layers": LAYERS,
    }


def _qwen_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    c = tok.convert_tokens_to_ids
    return {
        "image_token_id": c("<|image_pad|>"),
        "video_token_id": c("<|video_pad|>"),
        "vision_start_token_id": c("<|vision_start|>"),
        "vision_end_token_id": c("<|vision_end|>"),
    }


def _qwen_image_processor(patch: int) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, patch_size=patch, merge_size=2, temporal_patch_size=2
    )


def _tiny_qwen2_vl() -> tuple[Any, ProcessorMixin]:
    tok = _qwen_tokenizer()
    patch = 8
    processor = qwen_processor("qwen2_vl", _qwen_image_processor(patch), tok)
    config = Qwen2VLConfig(
        **_qwen_ids(tok),
        text_config=_qwen_text(tok),
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    )
    return config, processor


def _tiny_qwen2_5_vl() -> tuple[Any, ProcessorMixin]:
    tok = _qwen_tokenizer()
    patch = 8
    processor = qwen_processor("qwen2_5_vl", _qwen_image_processor(patch), tok)
    config = Qwen2_5_VLConfig(
        **_qwen_ids(tok),
        text_config=_qwen_text(tok),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": HIDDEN,
            "num_heads": 2,
            "patch_size": patch,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 32,
            "fullatt_block_indexes": [1],
        },
    )
    return config, processor


def _tiny_llama() -> tuple[Any, PreTrainedTokenizerFast]:
    tok = _llama_tokenizer([])
    return LlamaConfig(**_text_kwargs(tok)), tok


_BUILDERS: dict[str, tuple[type[PreTrainedModel], Callable[[], tuple[Any, Any]]]] = {
    "idefics": (IdeficsForVisionText2Text, _tiny_idefics),
    "idefics2": (Idefics2ForConditionalGeneration, _tiny_idefics2),
    "idefics3": (Idefics3ForConditionalGeneration, _tiny_idefics3),
    "llava": (LlavaForConditionalGeneration, _tiny_llava),
    "qwen2_vl": (Qwen2VLForConditionalGeneration, _tiny_qwen2_vl),
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, _tiny_qwen2_5_vl),
    "llama": (LlamaForCausalLM, _tiny_llama),
}


def tiny_config(family: str) -> tuple[Any, Any]:
    """The tiny config and the processor (tokenizer for llama) of `family`, without building weights."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; supported families: {', '.join(FAMILIES)}")
    return _BUILDERS[family][1]()


def build_tiny(family: str, *, seed: int = 0, attn_implementation: str | None = None) -> tuple[PreTrainedModel, Any]:
    """A randomly initialised tiny model of `family` (in eval mode) and its processor.

    Weights depend only on `seed` (the global torch RNG is left as it was). `attn_implementation`
    ("eager", "sdpa") is passed to the model; None lets transformers choose (sdpa on current torch).
    """
    config, processor = tiny_config(family)
    model_class = _BUILDERS[family][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    model.eval()
    return model, processor
