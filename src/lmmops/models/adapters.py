# Over 500 lines: one adapter per model family over one base class: the family details live here and nowhere else.
"""One small adapter per model family: where the decoder layers, attention and MLP are, and prompts.

`adapter_for(model, processor=None)` picks the adapter from the model's class (PEFT wrappers are unwrapped;
subclasses of a covered class are accepted). An adapter exposes the language model's structure
(`decoder_layers`, `self_attn_modules`, `out_projections`, `mlp_modules`, `hidden_size`, `num_layers`,
`num_heads`, `num_kv_heads`, `head_dim`, `attn_implementation`), the LIVE intervention site of the family
(`live_site`: "layer_output" or "mlp_output") and `build_prompt(s)`, which interleaves images and text in the
family's own format and returns a `PromptBatch` with exact token spans of the prefix, the demonstrations,
the query and the query's answer.

Family formats (one item = image + `Question: {q} Short answer: {a}`, items separated by a newline):
  idefics     interleaved list given to IdeficsProcessor: it writes
              `<fake_token_around_image><image><fake_token_around_image>` per image and builds the
              `image_attention_mask` that Idefics' gated cross-attention needs;
  idefics2    `<image>` placeholder, expanded by the processor to `<fake>` + `<image>` x n_latents + `<fake>`
              (the processor also inserts a space after the closing `<fake>`);
  idefics3    `<image>` placeholder, expanded to the tiled layout (`<row_i_col_j>` tiles + `<global-img>`);
  llava       `<image>` placeholder, expanded to one `<image>` per vision patch;
  qwen2_vl, qwen2_5_vl  `<|vision_start|><|image_pad|><|vision_end|>`, `<|image_pad|>` expanded to
              (grid_t*grid_h*grid_w)/merge^2 tokens; the processor also returns `image_grid_thw` and
              `mm_token_type_ids`, which the model needs for its 3D (M-RoPE) position ids;
  llama       text only (items must have no image).

How spans are found: one processor call makes the batch; for each row the query alone is processed again
(one image) and must equal the row's last tokens, the prefix (BOS + instruction) is processed alone and
must equal the row's first tokens, and the answer's tokens come from the tokenizer's offsets on the query
text and must equal the row's last tokens. Any mismatch raises PromptAlignmentError rather than return a
wrong span. Text-only prompts use the tokenizer's character offsets on the whole prompt directly.

Image features (the demo feature cache of `lmmops.icl.cache`): `image_features(images)` returns, per
image, the embeddings the language model reads at that image's image tokens (vision tower + projector or
connector, one image per call row so that each image's features stand alone), and
`embed_with_image_features(input_ids, features)` writes them into the token embeddings at the image-token
positions, in prompt order, exactly as the model's own forward does; `model(inputs_embeds=...)` then skips
the vision encoder. With `build_prompts(need_pixels=...)` LLaVA also leaves the cached images out of the image
processor (`skips_unneeded_pixels`: its image tokens depend on the image size only, so the prompt's ids are built
by parts); the other families still process every image. LLaVA always builds by parts with its own processor
and memoises each image's pixel rows (`_pixel_rows`): in-context vector training re-draws the same demo images
every step (~25% faster LIVE steps on the default model; identical tensors, tested against the processor).
Supported (`supports_feature_cache`) for llava, idefics2 and idefics3, whose forward
merges image features by a masked scatter at the image token. Not for idefics (gated cross-attention reads
the image states inside every layer) nor qwen2_vl/qwen2_5_vl (their M-RoPE position ids are computed from
input_ids and image_grid_thw inside the forward, which inputs_embeds would bypass): those raise
NotImplementedError naming the family.

Run: `python -c "from lmmops.models import build_tiny, adapter_for; m, p = build_tiny('idefics2');
print(adapter_for(m, p).num_kv_heads)"`.

Departures from the references: one shared template for every family (the reference codes each hard-code
their own); LIVE site per family as docs/methods.md §5 says (layer output for Idefics v1, MLP output otherwise).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL.Image import Image
from torch import nn

from lmmops.models.errors import PromptAlignmentError, UnsupportedModelError
from lmmops.models.prompt import (
    SEPARATOR,
    ICLItem,
    ItemLike,
    PromptBatch,
    Span,
    answer_char_start,
    as_item,
    instruction_text,
    item_text,
)

Segment = str | Image
PIXEL_MEMO_BYTES = 256 << 20  # pixel rows of recently processed images a LLaVA adapter keeps (see _pixel_rows)
QUERY_IDS_MEMO = 4096  # query token-id lists an adapter keeps (see ModelAdapter._query_alone)
PromptSpec = tuple[Sequence[ItemLike], ItemLike]


def _row_bounds(attention_mask_row: torch.Tensor) -> Span:
    nonzero = attention_mask_row.nonzero().flatten()
    if len(nonzero) == 0:
        return (0, 0)
    return int(nonzero[0]), int(nonzero[-1]) + 1


class ModelAdapter:
    """Structure and prompt format of one model family. Subclasses set the class variables."""

    family: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]]
    live_site: ClassVar[str] = "mlp_output"
    image_placeholder: ClassVar[str] = "<image>"
    text_model_path: ClassVar[tuple[str, ...]]
    vision_model_path: ClassVar[tuple[str, ...]] = ()  # the vision encoder (counted by tests/benchmarks)
    has_image_features: ClassVar[bool] = False  # `image_features` works (get_image_features, one image a row)
    supports_feature_cache: ClassVar[bool] = False  # `embed_with_image_features` + inputs_embeds is exact
    # `build_prompts(need_pixels=...)` leaves the unneeded images out of the image processing (their image tokens
    # stay); families without it process every image whatever `need_pixels` says.
    skips_unneeded_pixels: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any = None):
        self.model = model
        self.processor = processor
        # Token ids of a query (image + text) alone, by (text, image size and mode): the span check of every
        # prompt needs them, and processing the query image again per prompt cost ~7% of a batch's time.
        # Least recently used entries go beyond QUERY_IDS_MEMO (a real VQA split has ~10^5 distinct queries).
        self._query_ids: OrderedDict[tuple[str, tuple[int, int], str], list[int]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(family={self.family!r}, layers={self.num_layers}, hidden={self.hidden_size}, "
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"attn={self.attn_implementation!r}, live_site={self.live_site!r})"
        )

    # ----- structure -------------------------------------------------------------------------------
    @property
    def text_model(self) -> nn.Module:
        """The language model's decoder stack (the module that owns `.layers`)."""
        module: Any = self.model
        for name in self.text_model_path:
            module = getattr(module, name)
        return module

    @property
    def text_config(self) -> Any:
        """The language model's config (the whole config for text-only models and Idefics v1)."""
        return self.model.config.get_text_config()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.text_model.layers

    @property
    def self_attn_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.decoder_layers]

    @property
    def mlp_modules(self) -> list[nn.Module]:
        return [layer.mlp for layer in self.decoder_layers]

    @property
    def out_projections(self) -> list[nn.Linear]:
        """Each decoder layer's attention output projection (`o_proj`): its input is the attention output of all
        heads (head h at columns h*head_dim:(h+1)*head_dim), before the projection."""
        found = [getattr(attn, "o_proj", None) for attn in self.self_attn_modules]
        if not all(isinstance(m, nn.Linear) for m in found):
            raise NotImplementedError(f"{self.family}: the self-attention modules have no nn.Linear `o_proj`")
        return found  # type: ignore[return-value]

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def head_dim(self) -> int:
        attn = self.self_attn_modules[0]
        return int(getattr(attn, "head_dim", None) or self.hidden_size // self.text_config.num_attention_heads)

    @property
    def num_heads(self) -> int:
        return self.self_attn_modules[0].q_proj.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.self_attn_modules[0].k_proj.out_features // self.head_dim

    @property
    def attn_implementation(self) -> str:
        """The attention implementation the decoder's attention modules actually dispatch to."""
        config = getattr(self.self_attn_modules[0], "config", None) or self.text_config
        return str(config._attn_implementation)

    # ----- image features (demo feature cache) ------------------------------------------------------
    @property
    def vision_model(self) -> nn.Module:
        """The vision encoder module (its forward runs once per image batch the model encodes)."""
        if not self.vision_model_path:
            raise NotImplementedError(f"{self.family} has no separate vision encoder module")
        module: Any = self.model
        for name in self.vision_model_path:
            module = getattr(module, name)
        return module

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def _require_feature_cache(self) -> None:
        if not self.supports_feature_cache:
            raise NotImplementedError(
                f"{self.family}: precomputed image features are not supported (see lmmops.models.adapters); "
                f"run ICL without the demo feature cache"
            )

    def _pixel_inputs(self, images: Sequence[Image], processor: Any) -> dict[str, torch.Tensor]:
        """Image-processor tensors for `images`, one image per row, on the model's device and dtype."""
        image_processor = getattr(processor, "image_processor", processor)
        inputs = dict(image_processor([[im] for im in images], return_tensors="pt"))
        return self._to_model(inputs)

    def _to_model(self, inputs: dict[str, Any]) -> dict[str, Any]:
        param = next(self.model.parameters())
        return {k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device))
                for k, v in inputs.items()}

    @torch.no_grad()
    def image_features(self, images: Sequence[Image], processor: Any = None) -> list[torch.Tensor]:
        """Per image, the (image tokens, hidden) embeddings the language model reads for it."""
        if not self.has_image_features:
            raise NotImplementedError(f"{self.family}: no per-image features (no get_image_features to call)")
        processor = processor if processor is not None else self.processor
        if processor is None:
            raise ValueError(f"{type(self).__name__} needs a processor: adapter_for(model, processor)")
        if not images:
            return []
        features = list(self.model.get_image_features(**self._pixel_inputs(images, processor)).pooler_output)
        if len(features) != len(images):
            raise ValueError(f"{self.family}: get_image_features gave {len(features)} outputs for {len(images)} images")
        return [f.reshape(-1, f.shape[-1]) for f in features]

    def batch_image_features(self, inputs: dict[str, Any], positions: Sequence[int],
                             images: Sequence[Image]) -> list[torch.Tensor]:
        """Features of the images at `positions` (indices in prompt order over the whole batch) of a
        processed prompt batch `inputs`; `images` are the same images, used by families whose processor
        output cannot be sliced per image (they are processed again)."""
        return self.image_features(images)

    def embed_with_image_features(self, input_ids: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token embeddings of `input_ids` with the image-token positions filled by `features` (in order)."""
        self._require_feature_cache()
        embeds = self.model.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        n_tokens = int(mask.sum())
        flat = torch.cat([f.reshape(-1, embeds.shape[-1]) for f in features]) if features else embeds.new_zeros(0, 1)
        if flat.shape[0] != n_tokens:
            raise ValueError(f"{self.family}: {n_tokens} image tokens in the prompts but {flat.shape[0]} feature "
                             f"rows for {len(features)} images")
        return embeds.masked_scatter(mask[..., None], flat.to(embeds.device, embeds.dtype))

    # ----- prompts ---------------------------------------------------------------------------------
    def postprocess_answer(self, generated: str) -> str:
        """A short answer from generated text: up to the first newline (the item separator), stripped."""
        return generated.split(SEPARATOR, 1)[0].split("Question:", 1)[0].strip()

    def build_prompt(
        self,
        demos: Sequence[ItemLike],
        query: ItemLike,
        *,
        with_answer: bool = False,
        instruction: str | None = None,
        processor: Any = None,
    ) -> PromptBatch:
        """Processor tensors and token spans for k demonstrations followed by the query."""
        return self.build_prompts(
            [(demos, query)], with_answer=with_answer, instruction=instruction, processor=processor
        )

    def build_prompts(
        self,
        prompts: Sequence[PromptSpec],
        *,
        with_answer: bool = False,
        instruction: str | None = None,
        padding_side: str = "left",
        processor: Any = None,
        close_answer: bool = False,
        need_pixels: Sequence[Sequence[bool]] | None = None,
    ) -> PromptBatch:
        """A padded batch of prompts (left padding by default, for generation), spans per row.

        `close_answer` (with `with_answer`) puts the item separator after the query's answer and counts it in the
        answer span: training targets that include where an answer ends, i.e. the token at which inference
        stops generating (as every demonstration's answer is followed by it).
        `need_pixels` (per prompt, one flag per image: demos then query) marks the images whose pixel values the
        caller needs; where the family `skips_unneeded_pixels`, `pixel_values` then holds the flagged images only,
        in prompt order (the demo feature cache supplies the others' features), and the token ids are the same.
        """
        processor = processor if processor is not None else self.processor
        if processor is None:
            raise ValueError(f"{type(self).__name__} needs a processor: adapter_for(model, processor)")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not prompts:
            raise ValueError("build_prompts needs at least one prompt")
        parsed = [([as_item(d) for d in demos], as_item(query)) for demos, query in prompts]
        for demos, query in parsed:
            self._check_items([*demos, query])
        if close_answer and not with_answer:
            raise ValueError("close_answer needs with_answer=True")
        if need_pixels is not None and [len(f) for f in need_pixels] != [len(d) + 1 for d, _ in parsed]:
            raise ValueError("need_pixels needs one flag per image of each prompt (its demos, then its query)")
        return self._build(
            processor, parsed, with_answer=with_answer, instruction=instruction, padding_side=padding_side,
            close_answer=close_answer, need_pixels=need_pixels,
        )

    def _check_items(self, items: list[ICLItem]) -> None:
        missing = [it.question for it in items if it.image is None]
        if missing:
            raise ValueError(f"{self.family} prompts need an image for every item; missing for {missing}")

    def _segments(
        self, demos: list[ICLItem], query: ICLItem, *, with_answer: bool, instruction: str | None,
        close_answer: bool = False,
    ) -> list[Segment]:
        segments: list[Segment] = []
        if instruction:
            segments.append(instruction_text(instruction))
        for demo in demos:
            segments += [demo.image, item_text(demo, with_answer=True) + SEPARATOR]  # type: ignore[list-item]
        segments += [query.image, _query_text(query, with_answer, close_answer)]  # type: ignore[list-item]
        return segments

    def _text(self, segments: list[Segment]) -> str:
        return "".join(s if isinstance(s, str) else self.image_placeholder for s in segments)

    def _encode(self, processor: Any, rows: list[list[Segment]], padding_side: str,
                need_pixels: Sequence[Sequence[bool]] | None = None) -> dict[str, Any]:
        """One processor call for several rows of segments (family-specific in Idefics v1); every image is
        processed (`need_pixels` is honoured only by families that `skips_unneeded_pixels`)."""
        texts = [self._text(row) for row in rows]
        images = [[s for s in row if not isinstance(s, str)] for row in rows]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": padding_side, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images
        return dict(processor(**kwargs))

    def _ids(self, processor: Any, segments: list[Segment]) -> list[int]:
        return self._encode(processor, [segments], "right")["input_ids"][0].tolist()

    def _query_alone(self, processor: Any, query: ICLItem, text: str) -> list[int]:
        """Token ids of the query's image and `text` processed alone. Memoised by text and image size/mode for
        the adapter's own processor: in every covered family the image tokens depend on the image's size,
        never on its pixels."""
        image = query.image
        if processor is not self.processor or image is None:
            return self._ids(processor, [image, text] if image is not None else [text])
        key = (text, image.size, image.mode)
        if key in self._query_ids:
            self._query_ids.move_to_end(key)
        else:
            self._query_ids[key] = self._ids(processor, [image, text])
            if len(self._query_ids) > QUERY_IDS_MEMO:
                self._query_ids.popitem(last=False)
        return self._query_ids[key]

    def _build(
        self,
        processor: Any,
        parsed: list[tuple[list[ICLItem], ICLItem]],
        *,
        with_answer: bool,
        instruction: str | None,
        padding_side: str,
        close_answer: bool = False,
        need_pixels: Sequence[Sequence[bool]] | None = None,
    ) -> PromptBatch:
        rows = [self._segments(d, q, with_answer=with_answer, instruction=instruction, close_answer=close_answer)
                for d, q in parsed]
        inputs = self._encode(processor, rows, padding_side, need_pixels)
        lead = self._ids(processor, [""])  # what the processor puts before any text (BOS or nothing)
        prefix_ids = self._ids(processor, [instruction_text(instruction)]) if instruction else lead
        tokenizer = processor.tokenizer
        spans: dict[str, list[Any]] = {"prefix": [], "demos": [], "query": [], "answer": []}
        for r, (_demos, query) in enumerate(parsed):
            start, end = _row_bounds(inputs["attention_mask"][r])
            row = inputs["input_ids"][r, start:end].tolist()
            query_full = self._query_alone(processor, query, _query_text(query, with_answer, close_answer))
            if query_full[: len(lead)] != lead:
                raise PromptAlignmentError(f"{self.family}: the processor's leading tokens changed: {lead}")
            query_ids = query_full[len(lead) :]
            n_prefix = len(prefix_ids)
            if row[:n_prefix] != prefix_ids or row[len(row) - len(query_ids) :] != query_ids:
                raise PromptAlignmentError(
                    f"{self.family}: prefix or query tokens not found in prompt {r}: {self._text(rows[r])!r}"
                )
            query_start = end - len(query_ids)
            if start + n_prefix > query_start:
                raise PromptAlignmentError(f"{self.family}: prefix and query overlap in prompt {r}")
            spans["prefix"].append((start, start + n_prefix))
            spans["demos"].append((start + n_prefix, query_start))
            spans["query"].append((query_start, end))
            answer: Span | None = None
            if with_answer:
                answer_ids = _answer_token_ids(tokenizer, query, SEPARATOR if close_answer else "")
                if row[len(row) - len(answer_ids) :] != answer_ids:
                    raise PromptAlignmentError(f"{self.family}: answer tokens {answer_ids} do not end prompt {r}")
                answer = (end - len(answer_ids), end)
            spans["answer"].append(answer)
        return PromptBatch(
            inputs=inputs,
            texts=[self._text(row) for row in rows],
            prefix_spans=spans["prefix"],
            demo_spans=spans["demos"],
            query_spans=spans["query"],
            answer_spans=spans["answer"],
            padding_side=padding_side,
        )

    # ----- the k-shot context of a query (exact shift analyses in lmmops.vectors.oracle) -----------
    def query_context_inputs(self, kshot: PromptBatch, zero_shot: PromptBatch) -> dict[str, Any]:
        """Inputs of `zero_shot` (the prefix and query of `kshot`'s one prompt, no demos) that give its tokens the
        context they have in `kshot` through every path other than self-attention to the demo tokens.

        In this family the demonstrations reach the query only through self-attention, so these are the
        zero-shot inputs as they are. Position ids are the caller's business (they are not family-specific).
        """
        if len(kshot) != 1 or len(zero_shot) != 1:
            raise ValueError("query_context_inputs takes single-prompt batches")
        return zero_shot.model_inputs()


def _query_text(query: ICLItem, with_answer: bool, close_answer: bool) -> str:
    return item_text(query, with_answer=with_answer) + (SEPARATOR if close_answer else "")


def _answer_token_ids(tokenizer: Any, item: ICLItem, suffix: str = "") -> list[int]:
    """Token ids of the answer (+ `suffix`) at the end of `item_text(item, with_answer=True) + suffix`, tokenized
    alone."""
    text = item_text(item, with_answer=True)
    a0 = answer_char_start(text, item)
    text += suffix
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    first = next((j for j, (_s, e) in enumerate(offsets) if e > a0), len(ids))
    return list(ids[first:])


class IdeficsAdapter(ModelAdapter):
    """Idefics v1 (IdeficsForVisionText2Text): gated cross-attention to images, interleaved list input."""

    family = "idefics"
    model_classes = ("IdeficsForVisionText2Text",)
    live_site = "layer_output"
    text_model_path = ("model",)

    def _encode(self, processor: Any, rows: list[list[Segment]], padding_side: str,
                need_pixels: Sequence[Sequence[bool]] | None = None) -> dict[str, Any]:
        # IdeficsProcessor takes the interleaved list itself and strips spaces around text items.
        rows = [[s for s in row if not (isinstance(s, str) and s == "")] for row in rows]
        return dict(processor(text=rows, padding="longest", padding_side=padding_side, return_tensors="pt"))

    def _text(self, segments: list[Segment]) -> str:
        fake = "<fake_token_around_image>"
        return "".join(s if isinstance(s, str) else f"{fake}<image>{fake}" for s in segments)

    def query_context_inputs(self, kshot: PromptBatch, zero_shot: PromptBatch) -> dict[str, Any]:
        """Idefics v1: besides self-attention, the demonstrations reach the query through gated cross-attention.

        IdeficsProcessor's `image_attention_mask` lets every token cross-attend to the most recent image before
        it, so the query's leading `<fake_token_around_image>` (which precedes the query's own `<image>`) sees
        the last demonstration's image in the k-shot prompt and no image at all in the zero-shot prompt. The
        k-shot context is kept by giving the kept tokens their k-shot rows of that mask and the images those
        rows reference (the last demo image and the query image).
        """
        if len(kshot) != 1 or len(zero_shot) != 1:
            raise ValueError("query_context_inputs takes single-prompt batches")
        keep = torch.cat([torch.arange(*kshot.prefix_span), torch.arange(*kshot.query_span)])
        mask = kshot.inputs["image_attention_mask"][:, keep]
        used = mask.bool().any(dim=1)[0]
        inputs = zero_shot.model_inputs()
        inputs["image_attention_mask"] = mask[:, :, used]
        inputs["pixel_values"] = kshot.inputs["pixel_values"][:, used]
        return inputs


class Idefics2Adapter(ModelAdapter):
    family = "idefics2"
    model_classes = ("Idefics2ForConditionalGeneration",)
    text_model_path = ("model", "text_model")
    vision_model_path = ("model", "vision_model")
    has_image_features = True
    supports_feature_cache = True


class Idefics3Adapter(ModelAdapter):
    family = "idefics3"
    model_classes = ("Idefics3ForConditionalGeneration",)
    text_model_path = ("model", "text_model")
    vision_model_path = ("model", "vision_model")
    has_image_features = True
    supports_feature_cache = True


class LlavaAdapter(ModelAdapter):
    family = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    text_model_path = ("model", "language_model")
    vision_model_path = ("model", "vision_tower")
    has_image_features = True
    supports_feature_cache = True
    skips_unneeded_pixels = True

    def _encode(self, processor: Any, rows: list[list[Segment]], padding_side: str,
                need_pixels: Sequence[Sequence[bool]] | None = None) -> dict[str, Any]:
        """LlavaProcessor = image placeholder expanded to a fixed number of image tokens per image size, then the
        tokenizer, plus the image processor: done here by parts so that unneeded images skip the image processor
        (the cached ICL path). The ids equal the processor's (tested)."""
        if processor is not self.processor and (need_pixels is None or all(all(flags) for flags in need_pixels)):
            return super()._encode(processor, rows, padding_side)
        if need_pixels is None:
            need_pixels = [[True] * sum(not isinstance(s, str) for s in row) for row in rows]
        texts = ["".join(s if isinstance(s, str) else self._image_tokens(processor, s) for s in row) for row in rows]
        out = dict(processor.tokenizer(texts, padding=True, padding_side=padding_side, return_tensors="pt"))
        images = [im for row, flags in zip(rows, need_pixels, strict=True)
                  for im, needed in zip([s for s in row if not isinstance(s, str)], flags, strict=True) if needed]
        if images:
            out["pixel_values"] = self._pixel_rows(processor, images)
        return out

    def _pixel_rows(self, processor: Any, images: Sequence[Image]) -> torch.Tensor:
        """The image processor's pixel_values for `images`, one row per image, memoised per image object: LLaVA's
        image processor treats each image on its own, and training re-draws the same few hundred demo images
        (opened once, LRU-cached, by lmmops.vectors.data.DemoPool) at every step, where their preprocessing was
        ~15% of a LIVE step on the default model. Up to PIXEL_MEMO_BYTES are kept, least recently used first out;
        an entry keeps its image alive, so that its id is not reused while it is memoised."""
        if processor is not self.processor:
            return processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        memo: OrderedDict[int, tuple[Image, torch.Tensor]] = self.__dict__.setdefault("_pixel_memo", OrderedDict())
        missing = list({id(im): im for im in images if id(im) not in memo}.values())
        if missing:
            pixels = processor.image_processor(missing, return_tensors="pt")["pixel_values"]
            for im, row in zip(missing, pixels, strict=True):
                memo[id(im)] = (im, row)
        rows = []
        for im in images:
            memo.move_to_end(id(im))
            rows.append(memo[id(im)][1])
        held = sum(row.numel() * row.element_size() for _im, row in memo.values())
        while held > PIXEL_MEMO_BYTES and len(memo) > len(set(map(id, images))):
            _im, row = memo.popitem(last=False)[1]
            held -= row.numel() * row.element_size()
        return torch.stack(rows)

    def _image_tokens(self, processor: Any, image: Image) -> str:
        """The image tokens LlavaProcessor puts in place of one image of this size (its count is learned from
        one processor call per size)."""
        memo = self.__dict__.setdefault("_image_token_text", {})
        key = (id(processor), image.size)
        if key not in memo or memo[key][0] is not processor:  # the processor is kept, so its id is not reused
            ids = super()._encode(processor, [[image]], "right")["input_ids"][0]  # the processor itself
            token = processor.image_token
            memo[key] = (processor, token * int((ids == processor.tokenizer.convert_tokens_to_ids(token)).sum()))
        return memo[key][1]

    @torch.no_grad()
    def batch_image_features(self, inputs: dict[str, Any], positions: Sequence[int],
                             images: Sequence[Image]) -> list[torch.Tensor]:
        # LLaVA's pixel_values hold one row per image in prompt order: slice them instead of re-processing.
        if not positions:
            return []
        pixels = inputs["pixel_values"][list(positions)]
        features = self.model.get_image_features(pixel_values=pixels).pooler_output
        return [f.reshape(-1, f.shape[-1]) for f in features]

    def _pixel_inputs(self, images: Sequence[Image], processor: Any) -> dict[str, torch.Tensor]:
        # LLaVA's CLIP image processor takes a flat list (one pixel tensor per image).
        image_processor = getattr(processor, "image_processor", processor)
        return self._to_model(dict(image_processor(list(images), return_tensors="pt")))


class Qwen2VLAdapter(ModelAdapter):
    family = "qwen2_vl"
    model_classes = ("Qwen2VLForConditionalGeneration",)
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    text_model_path = ("model", "language_model")
    vision_model_path = ("model", "visual")
    has_image_features = True


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)


class LlamaAdapter(ModelAdapter):
    """Text-only Llama-architecture causal LMs (also SmolLM2 loaded from GGUF). The processor is a tokenizer."""

    family = "llama"
    model_classes = ("LlamaForCausalLM",)
    image_placeholder = ""
    text_model_path = ("model",)

    def _check_items(self, items: list[ICLItem]) -> None:
        with_image = [it.question for it in items if it.image is not None]
        if with_image:
            raise ValueError(f"{self.family} is text-only; items with an image: {with_image}")

    def _build(
        self,
        processor: Any,
        parsed: list[tuple[list[ICLItem], ICLItem]],
        *,
        with_answer: bool,
        instruction: str | None,
        padding_side: str,
        close_answer: bool = False,
        need_pixels: Sequence[Sequence[bool]] | None = None,  # text-only: no images
    ) -> PromptBatch:
        tokenizer = getattr(processor, "tokenizer", processor)
        texts: list[str] = []
        bounds: list[tuple[int, int, int | None]] = []  # char offsets: demos start, query start, answer start
        for demos, query in parsed:
            prefix = instruction_text(instruction)
            body = "".join(item_text(d, with_answer=True) + SEPARATOR for d in demos)
            q_text = item_text(query, with_answer=with_answer)
            q0 = len(prefix) + len(body)
            a0 = q0 + answer_char_start(q_text, query) if with_answer else None
            q_text = _query_text(query, with_answer, close_answer)
            texts.append(prefix + body + q_text)
            bounds.append((len(prefix), q0, a0))
        enc = tokenizer(
            texts, padding=True, padding_side=padding_side, return_offsets_mapping=True, return_tensors="pt"
        )
        offsets = enc.pop("offset_mapping")
        inputs = dict(enc)
        spans: dict[str, list[Any]] = {"prefix": [], "demos": [], "query": [], "answer": []}
        for r, (d0, q0, a0) in enumerate(bounds):
            start, end = _row_bounds(inputs["attention_mask"][r])
            ends = offsets[r, :, 1].tolist()

            def first_token_after(char: int, start: int = start, end: int = end, ends: list[int] = ends) -> int:
                return next((j for j in range(start, end) if ends[j] > char), end)

            demos_start, query_start = first_token_after(d0), first_token_after(q0)
            spans["prefix"].append((start, demos_start))
            spans["demos"].append((demos_start, query_start))
            spans["query"].append((query_start, end))
            spans["answer"].append((first_token_after(a0), end) if a0 is not None else None)
        return PromptBatch(
            inputs=inputs,
            texts=texts,
            prefix_spans=spans["prefix"],
            demo_spans=spans["demos"],
            query_spans=spans["query"],
            answer_spans=spans["answer"],
            padding_side=padding_side,
        )


ADAPTERS: tuple[type[ModelAdapter], ...] = (
    IdeficsAdapter,
    Idefics2Adapter,
    Idefics3Adapter,
    LlavaAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    LlamaAdapter,
)
_BY_CLASS: dict[str, type[ModelAdapter]] = {name: a for a in ADAPTERS for name in a.model_classes}
_BY_FAMILY: dict[str, type[ModelAdapter]] = {a.family: a for a in ADAPTERS}


def supported_families() -> dict[str, tuple[str, ...]]:
    """Family name -> the transformers model classes its adapter covers."""
    return {a.family: a.model_classes for a in ADAPTERS}


def image_feature_families() -> tuple[str, ...]:
    """The families whose adapter gives per-image features (`has_image_features`)."""
    return tuple(a.family for a in ADAPTERS if a.has_image_features)


def supported_text() -> str:
    """One line listing the families and their classes, for error messages."""
    return "; ".join(f"{family} ({', '.join(classes)})" for family, classes in supported_families().items())


def adapter_class_for(model_class: type | str) -> type[ModelAdapter]:
    """The adapter class covering `model_class` (a class, its subclasses, or a class name)."""
    names = [model_class] if isinstance(model_class, str) else [k.__name__ for k in model_class.__mro__]
    for name in names:
        if name in _BY_CLASS:
            return _BY_CLASS[name]
    shown = model_class if isinstance(model_class, str) else model_class.__name__
    raise UnsupportedModelError(f"no adapter for model class {shown}; supported families: {supported_text()}")


def adapter_for(model: nn.Module, processor: Any = None) -> ModelAdapter:
    """The adapter of `model`'s family, bound to `processor` (needed only for build_prompt(s))."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrappers
    return adapter_class_for(type(base))(base, processor)


def family_of(model_class: type | str) -> str:
    return adapter_class_for(model_class).family
